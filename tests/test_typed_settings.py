"""The DG sweep config and the search settings are typed and checked by the engine behind
``Config`` (``mixjax.config.set_value`` / ``check_types``): ``--set`` / ``--search-set`` work on
them, and a wrong type or unknown key is one error naming the key, exit status 2, before
anything is built."""

import pathlib

import pytest

from mixjax import cli
from mixjax.config import ConfigError
from mixjax.dg import config as dg_config
from mixjax.search import settings as search_settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
DG = str(ROOT / "configs" / "dg_tiny.py")
SEARCH = str(ROOT / "configs" / "search_tiny_regmix.py")


@pytest.mark.parametrize("item, key", [("steps=abc", "'steps'"), ("vmap=3", "'vmap'"),
                                       ("model.mlp_width=1.5", "'model.mlp_width'"),
                                       ("nosuch=1", "'nosuch'")])
def test_dg_sweep_config_types_name_the_key(item, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key):
        dg_config.load(DG, [item])
    assert cli.main(["dg", "sweep", DG, "--out", str(tmp_path / "s"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("error:") == 1
    assert not (tmp_path / "s").exists()


def test_dg_sweep_config_coerces_like_config():
    cfg = dg_config.load(DG, ["steps=7", "checkpoint_freq=3"])
    assert cfg.steps == 7 and cfg.checkpoint_freq == 3 and isinstance(cfg.holdout_fraction, float)


@pytest.mark.parametrize("item, message", [
    ("folds=abc", "search setting 'folds': expected"),
    ("sizes=[16.5, 32]", "search setting 'sizes[0]'"),
    ("colour=blue", "unknown search setting 'colour'"),
])
def test_search_settings_types_name_the_key(item, message, tmp_path, capsys):
    with pytest.raises(search_settings.SearchError, match=message.replace("[", r"\[")):
        search_settings.load_search_config(SEARCH, search_overrides=[item])
    out = tmp_path / "out"
    assert cli.main(["search", "regmix", SEARCH, "--out", str(out), "--search-set", item]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (out / "swarm").exists()


def test_search_settings_defaults_and_coercion():
    _, _, s = search_settings.load_search_config(SEARCH, search_overrides=["baselines=uniform",
                                                                    "max_epochs=2"])
    assert s["baselines"] == ["uniform"] and s["max_epochs"] == 2
    assert set(s) == set(search_settings.DEFAULTS)
    assert search_settings.DEFAULTS["baselines"] == ["uniform", "natural"]
