"""Configs: loading, dotted overrides, and one clear error per bad key."""

import json
import pathlib

import pytest

from mixjax import config as C
from mixjax.config import ConfigError

ROOT = pathlib.Path(__file__).parent.parent


def test_shipped_configs_load_and_validate():
    files = sorted((ROOT / "configs").glob("lm_*.py"))   # the LM training configs
    assert files
    for f in files:
        cfg = C.load(f)
        assert isinstance(cfg, C.Config), f


def test_dotted_overrides_with_types():
    cfg = C.load(ROOT / "configs" / "lm_tiny_uniform.py",
                 ["train.steps=7", "mixing.name=temperature", "mixing.hparams.tau=3",
                  "optim.lr=1e-3", "model.tie_embeddings=False", "data.domains=['code', 'news']",
                  "eval.target_mixture={'code': 1.0}", "train.reference=None"])
    assert cfg.train.steps == 7 and cfg.mixing.name == "temperature"
    assert cfg.mixing.hparams == {"tau": 3}
    assert cfg.optim.lr == 1e-3 and cfg.model.tie_embeddings is False
    assert cfg.data.domains == ("code", "news")
    assert cfg.eval.target_mixture == {"code": 1.0}


def test_int_is_accepted_for_float_but_not_the_reverse():
    cfg = C.Config()
    C.apply_override(cfg, "optim.lr=1")
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError, match="'train.steps'"):
        C.apply_override(cfg, "train.steps=1.5")


@pytest.mark.parametrize("override, key", [
    ("train.stepz=3", "train.stepz"),
    ("nosection.x=1", "nosection"),
    ("train.steps=abc", "train.steps"),
    ("model.tie_embeddings=1", "model.tie_embeddings"),
    ("optim.lr=-0.1", "optim.lr"),
    ("train.steps=0", "train.steps"),
    ("data.sampler=random", "data.sampler"),
    ("data.prefetch=process", "data.prefetch"),
    ("mixing.apply_to=everything", "mixing.apply_to"),
    ("mixing.name=nope", "mixing.name"),
    ("mixing.hparams.nope=1", "mixing.hparams"),
    ("model.num_heads=3", "model.num_heads"),
    ("train.grad_accum=5", "train.grad_accum"),
    ("optim.decay=step", "optim.decay"),
    ("grads.strategy=magic", "grads.strategy"),
    ("mesh.data=0", "mesh.data"),
    ("eval.target_mixture={'a': -1.0}", "eval.target_mixture"),
    ("mixing.sample_reweight=nope", "mixing.sample_reweight"),
    ("mixing.sample_reweight_hparams={'temperature': 2.0}", "mixing.sample_reweight_hparams"),
])
def test_bad_values_name_the_key(override, key):
    # values are checked by config loading, registered names (mixers) when the run is built
    from mixjax.train import checks
    with pytest.raises(ConfigError) as e:
        cfg = checks.check_names(C.load(ROOT / "configs" / "lm_tiny_uniform.py", [override]))
    assert repr(key) in str(e.value) or key in str(e.value), str(e.value)


def test_sample_reweight_hparams_are_checked():
    from mixjax.train import checks
    base = ROOT / "configs" / "lm_tiny_uniform.py"
    cfg = checks.check_names(C.load(base, ["mixing.sample_reweight=quadratic",
                                           "mixing.sample_reweight_hparams={'burn_in': 10}"]))
    assert cfg.mixing.sample_reweight == "quadratic"
    with pytest.raises(ConfigError, match="'mixing.sample_reweight_hparams'.*temperature"):
        checks.check_names(C.load(base, ["mixing.sample_reweight=quadratic",
                                         "mixing.sample_reweight_hparams={'temperature': -1.0}"]))


def test_mixer_hparams_are_typed_by_the_mixer_class():
    from mixjax.train import checks
    base = ROOT / "configs" / "lm_tiny_uniform.py"
    cfg = checks.check_names(C.load(base, ["mixing.name=doremi", "mixing.hparams={'eta': 2}",
                                           "mixing.hparams.initial_weights=[1, 2]"]))
    assert cfg.mixing.hparams == {"eta": 2, "initial_weights": [1, 2]}    # as written (hashed)
    with pytest.raises(ConfigError, match=r"'mixing.hparams.eta': expected .*float.*got str 'fast'"):
        checks.check_names(C.load(base, ["mixing.name=doremi", "mixing.hparams.eta=fast"]))
    with pytest.raises(ConfigError, match=r"'mixing.hparams.initial_weights\[1\]'"):
        checks.check_names(C.load(base, ["mixing.name=doremi",
                                         "mixing.hparams.initial_weights=[0.5, 'x']"]))


def test_domain_dependent_checks():
    cfg = C.Config()
    cfg.data.sampler = "per_domain"
    cfg.data.batch_size = 4
    with pytest.raises(ConfigError, match="'data.batch_size'.*8 domains"):
        C.check_domains(cfg, tuple("abcdefgh"))
    cfg.data.batch_size = 8
    C.check_domains(cfg, tuple("abcdefgh"))
    cfg.eval.target_mixture = {"zzz": 1.0}
    with pytest.raises(ConfigError, match="'eval.target_mixture'.*zzz"):
        C.check_domains(cfg, tuple("abcdefgh"))


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        C.load(bad)


def test_a_stored_config_loads_whatever_mixer_it_names(tmp_path):
    """Config loading imports no registry: a run trained with an out-of-tree mixer (not
    importable here) still loads for `mixjax eval` / `mixjax export`; building it refuses."""
    import subprocess
    import sys
    d = C.to_dict(C.Config())
    d["mixing"]["name"], d["mixing"]["hparams"] = "not_installed_here", {"eta": 1.0}
    d["train"]["objective"] = "nor_this"
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = C.load_run_config(tmp_path)
    assert cfg.mixing.name == "not_installed_here" and cfg.train.objective == "nor_this"
    from mixjax.train import checks
    with pytest.raises(ConfigError, match="'mixing.name': unknown mixer 'not_installed_here'"):
        checks.check_names(cfg)
    code = ("import sys, mixjax.config as C; C.load_run_config(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith('mixjax')))")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['mixjax', 'mixjax.config', 'mixjax.config_engine', 'mixjax.errors']"


def test_json_round_trip():
    cfg = C.load(ROOT / "configs" / "lm_tiny_uniform.py", ["mixing.hparams.tau=2.5",
                                                         "mixing.name=temperature"])
    back = C.from_dict(json.loads(C.to_json(cfg)))
    assert back == cfg


def test_cli_errors_before_compiling(tmp_path, capsys):
    from mixjax.cli import main
    rc = main(["train", str(ROOT / "configs" / "lm_tiny_uniform.py"), "--set", "optim.lr=-1"])
    assert rc == 2 and "'optim.lr'" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    rc = main(["train", str(ROOT / "configs" / "lm_tiny_uniform.py"),
               "--set", f"train.run_dir={run_dir}"])
    assert rc == 2 and "already holds a run" in capsys.readouterr().err


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    from mixjax.train import loop
    cfg = C.load(ROOT / "configs" / "lm_tiny_uniform.py", [f"train.run_dir={tmp_path / 'r'}"])
    loop.prepare_run_dir(cfg, resume=False)
    with pytest.raises(loop.RunDirError, match="already holds a run"):
        loop.prepare_run_dir(cfg, resume=False)
    cfg.train.steps = 999                       # allowed: train longer
    loop.prepare_run_dir(cfg, resume=True)
    cfg.optim.lr = 0.5                          # not allowed: a different run
    with pytest.raises(loop.RunDirError, match="optim.lr"):
        loop.prepare_run_dir(cfg, resume=True)
