"""Runs the worked example of docs/extending.md (docs/extending_example.py) as written."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import mixing
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from train_fakes import PAD, VOCAB, fake_data, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example():
    import sys
    name = "mixjax_docs_extending_example"
    if name not in sys.modules:   # registering twice would be an error: load once
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs/extending_example.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod      # dataclasses look the module up while it executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_new_statistic_and_mixer_run_in_the_step():
    _load_example()
    mixer = mixing.get("spread", eta=2.0)
    emb = jax.random.normal(jax.random.PRNGKey(0), (VOCAB, VOCAB)) * 0.5

    def apply(p, x):
        return p["emb"][x]

    tokens = jax.random.randint(jax.random.PRNGKey(1), (6, 9), 0, PAD)
    batch = {"tokens": tokens, "domain_id": jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32),
             "sampling_weights": jnp.full((3,), 1 / 3)}
    tx = optax.sgd(0.1)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=3,
                                    pad_id=PAD, jit=False)
    state = state_lib.init_state({"emb": emb}, tx, mixer, 3, 0)
    _, m = step(state, batch)
    # by hand: per-domain variance of the token losses, then one multiplicative update
    tl, tm = step_lib.token_losses(apply, {"emb": emb}, tokens, PAD)
    tl, ids = np.asarray(tl, np.float64), np.asarray(batch["domain_id"])
    var = np.asarray([tl[ids == d].var() for d in range(3)])
    want = np.exp(2.0 * var) / np.exp(2.0 * var).sum()
    np.testing.assert_allclose(np.asarray(m["weights"]), want, rtol=1e-4)


def test_new_step_with_extra_state_trains_logs_and_resumes_exactly(tmp_path):
    _load_example()

    def cfg_for(run, steps):
        cfg = tiny_config(tmp_path / run, steps=steps, eval_every=0, ckpt_every=2)
        cfg.train.objective = "ema"
        cfg.train.objective_hparams = {"decay": 0.5}
        cfg.optim.schedule_steps = 4   # the same LR schedule for the 2-step first half
        return cfg

    full = loop.train(cfg_for("full", 4), data=fake_data(cfg_for("full", 4)))
    loop.train(cfg_for("split", 2), data=fake_data(cfg_for("split", 2)))
    split = loop.train(cfg_for("split", 4), data=fake_data(cfg_for("split", 4)), resume=True)
    assert int(full.state.step) == 4 and int(split.state.step) == 4
    assert _leaves_equal(full.state.extra["ema_params"], split.state.extra["ema_params"])
    assert _leaves_equal(full.state.params, split.state.params)
    assert not _leaves_equal(full.state.extra["ema_params"], full.state.params)
    recs = metrics_lib.read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    # logged from the step's metrics["extra"]; step 1 has LR 0 (warmup), so no gap yet
    assert recs[0]["ema_gap"] == 0 and all(r["ema_gap"] > 0 for r in recs[1:])


def test_the_new_methods_check_runs_at_config_validation(tmp_path):
    _load_example()
    from mixjax import config as config_lib
    from mixjax.train import checks
    cfg = tiny_config(tmp_path / "bad", steps=2)
    cfg.train.objective, cfg.train.objective_hparams = "ema", {"decay": 1.5}
    with pytest.raises(config_lib.ConfigError,
                       match=r"train.objective_hparams.*ema decay must be in \[0, 1\), got 1.5"):
        checks.check_names(config_lib.validate(cfg))
