"""The loop's prefetch thread (mixjax.train.prefetch) and the data stream it feeds the step.

The thread may draw batches early only as far as the weights, the queue and the
checkpoints allow; the batches the step sees are those of a sampler driven by hand
with the run's weight history (the stream is a function of (seed, weight history)).
"""

import time

import jax
import numpy as np
import pytest

from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from mixjax.train.prefetch import BatchPrefetcher
from train_fakes import FakeSampler, fake_data, tiny_config


def _sampler(lag=1):
    return FakeSampler(("a", "b", "c"), batch_size=6, seq_len=4, weights=None, lag=lag, seed=1)


def _settle(pf, want, timeout=10.0):
    """Waits until the thread has drawn ``want`` batches (or stops changing)."""
    deadline = time.time() + timeout
    while pf.drawn() < want and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)   # and would it draw more?
    return pf.drawn()


def _make(host, p, t):
    return {"t": t, "p": np.asarray(p), **host}


def test_ungated_draws_ahead_up_to_the_queue_and_keeps_the_order():
    ref = _sampler()
    want = [next(ref) for _ in range(5)]
    pf = BatchPrefetcher(_sampler(), _make, start=0, end=5, lag=1, gated=False, depth=2)
    try:
        assert _settle(pf, 2) == 2                      # the queue is full: no third draw
        got = [pf.get() for _ in range(5)]
    finally:
        pf.close()
    assert [t for t, _ in got] == list(range(5))
    for (_, b), w in zip(got, want):
        np.testing.assert_array_equal(b["tokens"], w["tokens"])


def test_gated_batch_waits_for_the_weights_lag_steps_back():
    pf = BatchPrefetcher(_sampler(lag=2), _make, start=0, end=6, lag=2, gated=True, depth=4)
    try:
        assert _settle(pf, 2) == 2                      # batches 0, 1 need no new weights
        pf.set_weights([1.0, 0.0, 0.0], step=0)         # w_0: from batch 2 on
        pf.weights_through(0)
        assert _settle(pf, 3) == 3                      # batch 2 drawn, batch 3 waits for w_1
        got = [pf.get() for _ in range(3)]
        assert set(got[2][1]["domain_id"].tolist()) == {0}
        np.testing.assert_array_equal(got[2][1]["p"], [1.0, 0.0, 0.0])
    finally:
        pf.close()


def test_checkpoint_hold_and_stop_drawing():
    pf = BatchPrefetcher(_sampler(), _make, start=0, end=10, lag=1, gated=False, depth=8,
                         holds=lambda t: t % 3 == 0)
    try:
        assert _settle(pf, 3) == 3                      # held before batch 3 (checkpoint at 3)
        state = pf.sampler_state()
        assert state["composer"]["step"] == 3           # the sampler after exactly 3 batches
        pf.release(3)
        assert _settle(pf, 6) == 6
        pf.stop_drawing()
        assert pf.ready() == 6 and pf.drawn() == 6
    finally:
        pf.close()


def test_an_error_in_the_thread_is_raised_by_get():
    def bad(host, p, t):
        if t == 1:
            raise ValueError("bad batch 1")
        return t
    pf = BatchPrefetcher(_sampler(), bad, start=0, end=4, lag=1, gated=False)
    try:
        assert pf.get() == (0, 0)
        with pytest.raises(ValueError, match="bad batch 1"):
            pf.get()
    finally:
        pf.close()


def _on_each_step(monkeypatch, record):
    """Every Trainer built from now on calls ``record(trainer, state, batch)`` before each
    train step (the batch the loop hands the step)."""
    real_init = loop.Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        step = self.train_step

        def recording(state, batch):
            record(self, state, batch)
            return step(state, batch)
        self.train_step = recording
    monkeypatch.setattr(loop.Trainer, "__init__", init)


@pytest.mark.parametrize("prefetch", ["thread", "inline"])
def test_loop_feeds_the_step_the_stream_of_its_weight_history(tmp_path, monkeypatch, prefetch):
    # An online mixer on the sampler with lag 2 (the thread draws batch t+1 while step t
    # runs; inline, the loop draws it after dispatching step t): the step's batches equal
    # a sampler driven by hand with weights.jsonl.
    cfg = tiny_config(tmp_path / "run", steps=6, eval_every=0, ckpt_every=3)
    cfg.mixing.name, cfg.mixing.apply_to = "groupdro", "sampling"
    cfg.data.lag, cfg.data.prefetch = 2, prefetch
    cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = 1, 16, 2   # fast compile
    seen = []
    _on_each_step(monkeypatch, lambda trainer, state, batch: seen.append(
        {k: np.asarray(batch[k]) for k in ("tokens", "domain_id", "sampling_weights")}))
    data = fake_data(cfg)
    loop.train(cfg, data=data)
    history = metrics_lib.read_jsonl(tmp_path / "run" / "weights.jsonl")
    assert len(history) > 2                                   # the weights did move
    by_step = {r["step"]: np.array(list(r["weights"].values()), np.float64) for r in history}
    hand = data.make_sampler(by_step[0] / by_step[0].sum())
    assert len(seen) == 6
    for t, got in enumerate(seen):
        p = hand.weights_for(t)
        want = next(hand)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["domain_id"], want["domain_id"])
        np.testing.assert_array_equal(got["sampling_weights"], np.float32(p))
        if t + 1 in by_step:
            hand.set_weights(by_step[t + 1] / by_step[t + 1].sum(), step=t)


@pytest.mark.parametrize("method", ["doge", "fish"])
def test_stratified_steps_get_host_blocked_rows_and_the_same_training(tmp_path, monkeypatch,
                                                                      method):
    # Steps that regroup the batch by domain (DoGE's vmap engine, Fish's meta step) get their
    # rows grouped by domain on the host and only reshape; training equals the device-sorted
    # path up to float reordering.
    def cfg_for(run):
        cfg = tiny_config(tmp_path / run, steps=3, eval_every=0, ckpt_every=3)
        cfg.data.sampler = "per_domain"
        cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = 1, 16, 2
        if method == "doge":
            cfg.mixing.name, cfg.mixing.hparams = "doge", {"target": "universal", "mu": 0.01}
            cfg.mixing.sampling_weights = "uniform"
        else:
            cfg.train.objective = "fish"
        return cfg

    seen, sorts = [], []

    def record(trainer, state, batch):
        if not seen or seen[-1][0] != trainer.blocked_batches:   # once per run: any sort op?
            sorts.append(str(jax.make_jaxpr(trainer.step_fn)(state, batch)).count(" sort["))
        seen.append((trainer.blocked_batches, np.asarray(batch["domain_id"])))
    _on_each_step(monkeypatch, record)
    blocked = loop.train(cfg_for("blocked"), data=fake_data(cfg_for("blocked")))
    monkeypatch.setattr(loop, "whole_batch_on_host", lambda: False)
    device = loop.train(cfg_for("device"), data=fake_data(cfg_for("device")))
    assert [b for b, _ in seen] == [True] * 3 + [False] * 3
    assert all(np.all(np.diff(ids) >= 0) for _, ids in seen[:3])        # grouped by domain
    # the blocked step drops the batch's device-side sort (Fish keeps the one of its random
    # domain order, a permutation of K)
    assert sorts[0] == sorts[1] - 1 and sorts[0] == (1 if method == "fish" else 0), sorts
    for a, b in zip(jax.tree.leaves(blocked.state.params), jax.tree.leaves(device.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(blocked.state.mix_state["weights"]),
                               np.asarray(device.state.mix_state["weights"]), rtol=2e-5)
