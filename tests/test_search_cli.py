"""``mixjax search``: bad input exits 2 before anything trains; a tiny search runs and resumes."""

import json
import textwrap

import numpy as np
import pytest

from mixjax import cli

CONFIG = textwrap.dedent('''
    from mixjax.config import Config

    def get_config():
        cfg = Config(name="search_cli_test")
        cfg.data.corpus = "mixpile-tiny"
        cfg.data.seq_len = 16
        cfg.data.batch_size = 8
        cfg.data.sampler = "stratified"
        cfg.model.d_model = 16
        cfg.model.num_layers = 1
        cfg.model.num_heads = 2
        cfg.train.steps = 2
        cfg.train.eval_every = 0
        cfg.eval.num_seqs = 2
        cfg.eval.batch_size = 2
        return cfg

    def get_search():
        # one target domain: one mixing-law fit per restart, fold and bootstrap sample instead
        # of eight (the uniform-average target's fits are tests/test_search_fit.py's)
        return {"proxies": 20, "design": "lhs", "route": "upweight", "strategy": "map",
                "target": "code",
                "bootstrap": 2, "samples": 2000, "law_restarts": 2, "folds": 2,
                "proxy_overrides": ["train.steps=3", "train.ckpt_every=0"]}
''')


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "search_cfg.py"
    path.write_text(CONFIG)
    return str(path)


@pytest.mark.parametrize("extra,message", [
    (["--search-set", "target=nowhere"], "target domain 'nowhere' is not in the data"),
    (["--search-set", "min_weight={'code': 0.7, 'math': 0.7}"], "simplex empty"),
    (["--search-set", "max_epochs=1e-9"], "simplex empty"),
    (["--proxies", "12"], "needs at least 20 proxies"),
    (["--search-set", "colour=blue"], "unknown search setting 'colour'"),
    (["--search-set", "design=grid"], "unknown 'grid'"),
])
def test_bad_input_exits_2_before_training(config, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = cli.main(["search", "law", config, "--out", str(out), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (out / "swarm").exists()


def test_tiny_law_search_runs_then_reuses_its_phases(config, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["search", "law", config, "--out", str(out), "--no-target"]
    assert cli.main(args) == 0
    weights = json.loads((out / "weights.json").read_text())
    w = weights["weights_by_domain"]
    assert len(w) == 8 and abs(sum(w.values()) - 1) < 1e-6 and min(w.values()) >= 0
    assert "mixing.name=manual" in weights["use"]
    fit = json.loads((out / "fit.json").read_text())
    assert fit["proxies_used"] == 20 and "spearman" in fit["cv"]
    assert (out / "results.md").exists() and (out / "fit.png").exists()
    capsys.readouterr()
    # the same command again reuses every phase (nothing retrains) and gives the same weights
    assert cli.main(args) == 0
    log = capsys.readouterr().out
    assert "swarm: reusing" in log
    assert json.loads((out / "weights.json").read_text()) == weights
    # another search into the same --out is refused, nothing overwritten
    assert cli.main(args + ["--search-set", "route=upsample"]) == 2
    assert json.loads((out / "weights.json").read_text()) == weights


SIZES = ["--sizes", "8,16,24", "--proxies", "8", "--proxy-set", "train.steps=4",
         "--proxy-set", "train.eval_every=2", "--search-set", "design=dirichlet"]


def test_law_across_sizes_fits_the_scaling_law_and_reports_extrapolation(config, tmp_path,
                                                                         capsys):
    """``--sizes``: one swarm per d_model, the additive law L(N, D, h) fitted on the two
    smaller sizes predicts the held-out largest; the law on all sizes gives the weights."""
    out = tmp_path / "out"
    assert cli.main(["search", "law", config, "--out", str(out), "--no-target", *SIZES]) == 0
    log = capsys.readouterr().out
    for size in (8, 16, 24):
        res = json.loads((out / f"swarm_d{size}" / "result.json").read_text())
        assert len(res["mixtures"]) == 8 and res["steps"] == 4 and len(res["history"]) == 1
    fit = json.loads((out / "fit.json").read_text())
    ex = fit["extrapolation"]
    assert fit["regressor"] == "scaling_law_additive" and fit["sizes"] == [8, 16, 24]
    assert len(ex["fit_N"]) == 2 and ex["held_out_N"] > max(ex["fit_N"])
    assert ex["runs_fitted"] == 2 * 8 * 2 and ex["runs_held_out"] == 8 * 2
    # the reported error is the held-out size's: recomputed from the saved predictions
    pred, actual = np.array(fit["cv"]["pred"]), np.array(fit["cv"]["actual"])
    assert len(actual) == 8 and np.all(np.isfinite(pred))
    assert ex["mae"] == pytest.approx(np.abs(pred - actual).mean())
    w = json.loads((out / "weights.json").read_text())["weights_by_domain"]
    assert abs(sum(w.values()) - 1) < 1e-6 and min(w.values()) >= 0
    assert "held-out largest N" in log and "extrapolated to the held-out largest N" in (
        out / "results.md").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--sizes", "16"], "a list of >= 2 distinct"),
    (["--sizes", "16,x"], "--sizes must be comma-separated integers"),
    (["--sizes", "8,16", "--proxies", "2", "--proxy-set", "train.eval_every=2",
      "--proxy-set", "train.steps=4"], "it needs >= 22 runs"),
    (["--sizes", "8,18", "--proxy-set", "train.eval_every=2", "--proxy-set", "train.steps=4"],
     "proxy size d_model=18"),
])
def test_bad_sizes_exit_2_before_training(config, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert cli.main(["search", "law", config, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not any(out.glob("swarm*"))
