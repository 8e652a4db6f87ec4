"""Gradient aggregators through the CLI: a short vmap run, and jvp as a config error."""

import json
import pathlib

import numpy as np
import pytest

from mixjax import cli

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "data.seq_len=16",
        "eval.num_seqs=2", "eval.batch_size=8", "train.progress=False", "train.eval_every=0",
        "train.ckpt_every=0", "optim.warmup_steps=0", "data.batch_size=8"]


def _train(config, run_dir, *sets):
    argv = ["train", str(CONFIGS / config), "--set", f"train.run_dir={run_dir}"]
    for s in TINY + list(sets):
        argv += ["--set", s]
    return cli.main(argv)


@pytest.mark.slow   # about 35 s on 2 shared cores (the K-vmapped step compiles slowly)
def test_upgrad_trains_with_vmap_and_moves_weights(tmp_path):
    assert _train("lm_tiny_upgrad.py", tmp_path / "u", "train.steps=2") == 0
    rows = [json.loads(x) for x in (tmp_path / "u" / "weights.jsonl").read_text().splitlines()]
    w = np.array(list(rows[-1]["weights"].values()))
    assert w.sum() == pytest.approx(1.0, abs=1e-5) and np.all(w >= 0)
    assert rows[-1]["step"] == 2


@pytest.mark.parametrize("config", ["lm_tiny_pcgrad.py", "lm_tiny_mgda.py"])
def test_aggregator_with_jvp_is_a_config_error(tmp_path, capsys, config):
    assert _train(config, tmp_path / "bad", "grads.strategy=jvp") == 2
    err = capsys.readouterr().err
    assert "jvp" in err and "gram" in err
    assert not (tmp_path / "bad").exists()
