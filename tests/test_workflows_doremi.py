"""The DoReMi recipe: phase configs, tables, and one tiny end-to-end run (slow)."""

import json

import numpy as np
import pytest

from mixjax import config as config_lib
from mixjax import workflows


def _cfg():
    return config_lib.load("configs/lm_tiny_doremi.py")


def test_phase_configs_share_everything_but_the_mixture(tmp_path):
    cfg = _cfg()
    base = workflows._phase_config(cfg, tmp_path / "base", 3, "b", mixture={"code": 1.0})
    ref = workflows._phase_config(cfg, tmp_path / "baseline", 3, "r", baseline="natural")
    proxy = workflows._phase_config(cfg, tmp_path / "proxy", 3, "p")
    assert (base.mixing.name, base.mixing.hparams) == ("manual", {"weights_by_domain": {"code": 1.0}})
    assert (ref.mixing.name, ref.train.reference) == ("natural", None)
    assert proxy.mixing.name == "doremi" and proxy.mixing.hparams == cfg.mixing.hparams
    for c in (base, ref, proxy):
        assert c.train.seed == c.data.seed == 3
        assert (c.train.steps, c.data.batch_size, c.data.seq_len) == \
            (cfg.train.steps, cfg.data.batch_size, cfg.data.seq_len)
    d_base, d_ref = config_lib.to_dict(base), config_lib.to_dict(ref)
    for key in ("model", "optim", "data", "eval"):
        assert d_base[key] == d_ref[key]


def test_perplexity_table_mean_std_and_wins():
    evals = lambda a, b: {"ppl/x": a, "ppl/y": b, "ppl_avg": (a + b) / 2, "ppl_worst": max(a, b)}
    table, data = workflows.perplexity_table(("x", "y"), [evals(10, 20), evals(12, 22)],
                                             [evals(11, 19), evals(13, 21)], "doremi", "natural")
    assert data["x"]["method_mean"] == 11 and data["x"]["baseline_mean"] == 12
    assert data["x"]["method_std"] == pytest.approx(np.std([10, 12], ddof=1))
    assert "| x | 12.00 ± 1.41 | 11.00 ± 1.41 | -8.3% |" in table
    assert "lower perplexity on 1/2 domains (2 seeds" in table


def test_recipe_rejects_wrong_mixer_and_bad_counts(tmp_path):
    cfg = _cfg()
    cfg.mixing.name = "groupdro"
    cfg.mixing.hparams = {}
    with pytest.raises(ValueError, match="expected 'doremi'"):
        workflows.run_recipe(workflows.RECIPES["doremi"], cfg, tmp_path)
    with pytest.raises(ValueError, match="--rounds"):
        workflows.run_recipe(workflows.RECIPES["doremi"], _cfg(), tmp_path, rounds=0)
    with pytest.raises(config_lib.ConfigError, match="nonsense"):
        workflows.run_recipe(workflows.RECIPES["doremi"], _cfg(), tmp_path,
                             base_overrides=["model.nonsense=1"])


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    cfg = _cfg()
    for item in ("train.steps=8", "model.d_model=32", "model.num_layers=1", "train.eval_every=0",
                 "train.ckpt_every=0", "eval.num_seqs=2"):
        config_lib.apply_override(cfg, item)
    out = tmp_path / "mix"
    res = workflows.run_recipe(workflows.RECIPES["doremi"], cfg, out, rounds=2, seeds=1,
                               log=lambda s: None)
    w = json.loads((out / "weights.json").read_text())
    assert len(w["rounds"]) == 2 and abs(sum(w["average"].values()) - 1) < 1e-6
    # Round 2's reference trained on round 1's averaged weights.
    ref2 = json.loads((out / "round2/seed0/reference/config.json").read_text())
    assert ref2["mixing"]["hparams"]["weights_by_domain"] == pytest.approx(w["rounds"][0]["average"])
    base = json.loads((out / "round2/seed0/base/config.json").read_text())
    assert base["mixing"]["hparams"]["weights_by_domain"] == pytest.approx(w["average"])
    assert (out / "weights.png").stat().st_size > 0 and "| uniform avg |" in res["table"]
    # A repeated command reuses every finished phase.
    again = workflows.run_recipe(workflows.RECIPES["doremi"], cfg, out, rounds=2, seeds=1,
                                 log=lambda s: None)
    assert again["table"] == res["table"] and again["seconds"] < 5
