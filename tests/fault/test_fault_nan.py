"""A non-finite loss stops every run (static mixers included) at the step it appears.

The message names the step in the files' convention (completed steps) and, where a
domain's own loss is non-finite, the domain; the run's files end at the last finite
step and its latest checkpoint holds finite values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from train_fakes import fake_data, tiny_config


def _restore_latest(run_dir):
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    step = ck.latest_step()
    import orbax.checkpoint as ocp
    got = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ck.close()
    return step, got["state"]


def _all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_static_mixer_stops_at_first_nonfinite_step(tmp_path):
    # lr 1e4 without warmup: the uniform run's gradient norm is NaN at step 4 (CPU, seed 0).
    cfg = tiny_config(tmp_path / "run", steps=8, eval_every=0, ckpt_every=2)
    cfg.optim.lr, cfg.optim.warmup_steps = 1e4, 0
    with pytest.raises(loop.NonFiniteLossError, match=r"^step 4: non-finite .*latest checkpoint: 2"):
        loop.train(cfg, data=fake_data(cfg))
    recs = metrics_lib.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in recs)
    step, state = _restore_latest(tmp_path / "run")
    assert step == 2 and _all_finite(state)


def _inject_nan(monkeypatch, at: int, domain: int | None):
    """Makes the loss (or one domain's loss) of 0-based step ``at`` NaN."""
    real_init = loop.Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        step = self.train_step

        def poisoned(state, batch):
            i = int(state.step)
            state, m = step(state, batch)
            if i == at:
                m = {**m, "loss": jnp.float32(jnp.nan)}
                if domain is not None:
                    m["domain_loss"] = m["domain_loss"].at[domain].set(jnp.nan)
            return state, m
        self.train_step = poisoned
    monkeypatch.setattr(loop.Trainer, "__init__", init)


@pytest.mark.parametrize("mixer,domain", [("temperature", 1)])
def test_injected_nan_names_step_and_domain(tmp_path, monkeypatch, mixer, domain):
    _inject_nan(monkeypatch, at=4, domain=domain)
    cfg = tiny_config(tmp_path / "run", steps=8, eval_every=2, ckpt_every=3)
    cfg.mixing.name = mixer
    where = "" if domain is None else rf" \(domain '{'abc'[domain]}'\)"
    with pytest.raises(loop.NonFiniteLossError, match=rf"^step 5: non-finite training loss nan"
                                                       rf" / gradient norm [0-9.]+{where};"):
        loop.train(cfg, data=fake_data(cfg))
    run = tmp_path / "run"
    assert [r["step"] for r in metrics_lib.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in metrics_lib.read_jsonl(run / "eval.jsonl")] == [2, 4]
    step, state = _restore_latest(run)
    assert step == 3 and _all_finite(state)
