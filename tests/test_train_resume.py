"""The run loop: exact resume, SIGTERM checkpoints, run-dir safety, non-finite stats."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from train_fakes import fake_data, tiny_config

HERE = pathlib.Path(__file__).parent


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def _groupdro_config(run_dir, steps):
    cfg = tiny_config(run_dir, steps=steps, eval_every=2, ckpt_every=3)
    # GroupDRO's weights change every step; apply them to sampling so the resumed
    # run must also reproduce the sampler's weight history.
    cfg.mixing.name = "groupdro"
    cfg.mixing.apply_to = "sampling"
    cfg.data.sampler = "stratified"
    return cfg


def test_stopped_and_resumed_run_equals_uninterrupted_run_bitwise(tmp_path):
    full = loop.train(_groupdro_config(tmp_path / "full", 6),
                      data=fake_data(_groupdro_config(tmp_path / "full", 6)))
    cfg3 = _groupdro_config(tmp_path / "split", 3)
    part = loop.train(cfg3, data=fake_data(cfg3))
    assert part.steps_done == 3
    cfg6 = _groupdro_config(tmp_path / "split", 6)
    with pytest.raises(loop.RunDirError, match="--resume"):
        loop.train(cfg6, data=fake_data(cfg6))              # never silently overwritten
    # The 6-step schedule's first 3 LRs equal the 3-step one's (warmup 2), so the
    # schedule rebuilt over 6 steps reproduces the uninterrupted run.
    resumed = loop.train(cfg6, data=fake_data(cfg6), resume=True, rebuild_schedule=True)
    assert resumed.steps_done == full.steps_done == 6
    assert _leaves_equal(resumed.state.params, full.state.params)
    assert _leaves_equal(resumed.state.opt_state, full.state.opt_state)
    assert _leaves_equal(resumed.state.mix_state, full.state.mix_state)
    a = metrics_lib.read_jsonl(tmp_path / "full" / "metrics.jsonl")
    b = metrics_lib.read_jsonl(tmp_path / "split" / "metrics.jsonl")
    drop = ("tokens_per_s",)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
    assert [r["step"] for r in b] == list(range(1, 7))
    assert strip(a) == strip(b)                                  # losses and weights, exactly
    wa = metrics_lib.read_jsonl(tmp_path / "full" / "weights.jsonl")
    wb = metrics_lib.read_jsonl(tmp_path / "split" / "weights.jsonl")
    assert wa == wb and len(wa) > 2                              # the weights did move
    # The stopped run also evaluated at its last step (3); the eval_every grid matches.
    ea = metrics_lib.read_jsonl(tmp_path / "full" / "eval.jsonl")
    eb = metrics_lib.read_jsonl(tmp_path / "split" / "eval.jsonl")
    assert [r["step"] for r in ea] == [2, 4, 6] and [r["step"] for r in eb] == [2, 3, 4, 6]
    assert ea == [r for r in eb if r["step"] != 3]
    # `mixjax eval RUN_DIR` path: the latest checkpoint reproduces the final evaluation
    cfg_full = _groupdro_config(tmp_path / "full", 6)
    ev = loop.evaluate_run(tmp_path / "full", data=fake_data(cfg_full))
    assert ev["step"] == 6
    for key, value in full.final_eval.items():
        np.testing.assert_allclose(ev[key], value, rtol=1e-6, err_msg=key)


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from train_fakes import fake_data, tiny_config
from mixjax.train import loop
cfg = tiny_config({run_dir!r}, steps=100000, eval_every=0, ckpt_every=0)
result = loop.train(cfg, data=fake_data(cfg), resume={resume})
print("STEPS", result.steps_done, "SIGNAL", result.signal, flush=True)
sys.exit(0 if result.signal is None else 128 + result.signal)
"""


def test_sigterm_leaves_a_restorable_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    script = SIGTERM_SCRIPT.format(tests=str(HERE), run_dir=str(run_dir), resume=False)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = int(out.split("STEPS")[1].split()[0])
    assert 2 <= steps < 100000
    from mixjax.train.checkpoint import Checkpointer
    ck = Checkpointer(run_dir / "checkpoints")
    assert ck.latest_step() == steps
    # restorable: the resumed run starts where the stopped one ended
    cfg = tiny_config(run_dir, steps=steps + 1, eval_every=0, ckpt_every=0)
    result = loop.train(cfg, data=fake_data(cfg), resume=True)
    assert result.steps_done == steps + 1
    ck.close()


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class NanAtStep(mixing.Mixer):
    """Test mixer: from step 2 on, domain 1's weight becomes NaN."""
    name = "_test_nan_at_step"

    def update(self, state, stats, step):
        w = state["weights"].at[1].set(jnp.where(step >= 2, jnp.nan, state["weights"][1]))
        return mixing.record_weights(state, w)


def test_nonfinite_stats_raise_naming_domain_and_step(tmp_path):
    cfg = tiny_config(tmp_path / "nan", steps=5, eval_every=0, ckpt_every=0)
    cfg.mixing.name = "_test_nan_at_step"
    # step 3 in the files' convention (completed steps): the third step (index 2) saw it
    with pytest.raises(mixing.NonFiniteStatsError, match=r"step 3: .*domain 'b'"):
        loop.train(cfg, data=fake_data(cfg))


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalLossRecorder(mixing.Mixer):
    """Test mixer: stores the eval_loss statistic it received."""
    name = "_test_eval_loss_recorder"
    requires = frozenset({"eval_loss"})

    def init(self, k):
        return mixing.init_state(jnp.full((k,), 1.0 / k), seen=jnp.zeros((k,)))

    def update(self, state, stats, step):
        return {**state, "seen": stats["eval_loss"]}


def test_mixer_reading_eval_loss_gets_the_step0_evaluation(tmp_path):
    cfg = tiny_config(tmp_path / "ev", steps=1, eval_every=0, ckpt_every=0)
    cfg.mixing.name = "_test_eval_loss_recorder"
    result = loop.train(cfg, data=fake_data(cfg))
    ev0 = metrics_lib.read_jsonl(tmp_path / "ev" / "eval.jsonl")[0]
    assert ev0["step"] == 0
    np.testing.assert_allclose(np.asarray(result.state.mix_state["seen"]),
                               [ev0[f"loss/{d}"] for d in ("a", "b", "c")], rtol=1e-6)
