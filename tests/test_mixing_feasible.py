"""Feasible Learning (mixjax.mixing.feasible): the primal-dual update against numpy, the example
hash, and the multipliers surviving a checkpoint round trip inside the real step's state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing import feasible


def numpy_hash(tokens):
    x = np.asarray(tokens, np.uint64) + 1
    s = x.shape[-1]
    h = np.zeros(x.shape[0], np.uint64)
    for t in range(s):                    # Horner: h = h * P + x_t (mod 2^32)
        h = (h * 0x01000193 + x[:, t]) % (1 << 32)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % (1 << 32)
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % (1 << 32)
    return h ^ (h >> 16)


def numpy_fl(lam, slots, loss, valid, eps, eta, decay):
    """One Feasible Learning step restated: dual ascent (summed over duplicate slots), projection,
    then each row's weight = its updated multiplier."""
    lam = lam.copy()
    delta = np.where(valid, eta * (loss - eps - decay * lam[slots]), 0.0)
    np.add.at(lam, slots, delta)
    lam = np.maximum(lam, 0.0)
    return lam, lam[slots]


def test_example_hash_matches_numpy_and_is_content_keyed():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50000, (6, 33)).astype(np.int32)
    tokens[4] = tokens[1]
    got = np.asarray(jax.jit(feasible.example_hash)(tokens))
    np.testing.assert_array_equal(got, numpy_hash(tokens).astype(np.uint32))
    assert got[4] == got[1] and len(set(got.tolist())) == 5


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_primal_dual_update_matches_numpy(decay):
    m = mixing.get("feasible", eps=1.0, dual_lr=0.5, slack_decay=decay, table_size=7)
    rng = np.random.default_rng(1)
    state = m.init(3)
    lam = np.zeros(7)
    upd = jax.jit(lambda st, stats: m.update(st, stats, 0))
    for _ in range(4):
        tokens = rng.integers(1, 9, (5, 4)).astype(np.int32)
        tokens[2] = tokens[0]                                  # a repeated example
        mask = np.ones((5, 3), np.float32)
        mask[3] = 0                                            # an all-pad row
        loss = rng.gamma(2.0, 0.6, 5).astype(np.float32)
        stats = {"sample_loss": jnp.asarray(loss), "token_mask": jnp.asarray(mask),
                 "example_id": feasible.example_hash(tokens)}
        state = upd(state, stats)
        slots = (numpy_hash(tokens) % 7).astype(np.int64)
        lam, want = numpy_fl(lam, slots, loss.astype(np.float64), mask.sum(1) > 0, 1.0, 0.5, decay)
        np.testing.assert_allclose(np.asarray(state["multipliers"]), lam, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(m.example_weights(state, stats)), want,
                                   rtol=1e-5, atol=1e-6)
    assert lam.max() > 0 and np.any(lam == 0)       # some bounds active, some satisfied


def test_bad_hyperparameters():
    for hp in ({"eps": -1.0}, {"dual_lr": 0.0}, {"table_size": 0}, {"slack_decay": float("nan")}):
        with pytest.raises(ValueError, match="feasible"):
            mixing.get("feasible", **hp)


def test_multipliers_ride_in_the_checkpointed_state():
    """The table is part of TrainState.mix_state: the real step updates it, and it is in the
    tree a checkpoint saves (TrainState.to_tree) and restores (from_tree)."""
    import optax
    import sharding_harness as H
    from mixjax.core import state as state_lib
    from mixjax.core import step as step_lib

    m = mixing.get("feasible", eps=2.0, dual_lr=1.0, table_size=64)
    params, _ = H.bigram_init(0)
    tx = optax.sgd(0.1)
    fn = step_lib.make_train_step(apply=H.bigram_apply, mixer=m, tx=tx, num_domains=2, pad_id=0,
                                  donate=False)
    tokens = np.random.default_rng(0).integers(1, H.VOCAB, (4, 9)).astype(np.int32)
    batch = {"tokens": tokens, "domain_id": np.array([0, 1, 0, 1], np.int32),
             "sampling_weights": np.array([0.5, 0.5], np.float32)}
    st = state_lib.init_state(params, tx, m, 2, seed=0)
    st, metrics = fn(st, batch)
    lam = np.asarray(st.mix_state["multipliers"])
    tl, tm = step_lib.token_losses(H.bigram_apply, params, jnp.asarray(tokens), 0)
    seq = np.asarray(step_lib.sequence_loss(tl, tm), np.float64)
    slots = (numpy_hash(tokens) % 64).astype(np.int64)
    want, w = numpy_fl(np.zeros(64), slots, seq, np.ones(4, bool), 2.0, 1.0, 0.0)
    np.testing.assert_allclose(lam, want, rtol=1e-5, atol=1e-6)
    # the objective is the multiplier-weighted sequence loss (equal token counts)
    np.testing.assert_allclose(float(metrics["objective"]), (w @ seq) / w.sum(), rtol=1e-5)
    # the saved layout of a checkpoint (mixjax.train.checkpoint) holds the table
    tree = st.to_tree()
    saved = [v for k, v in jax.tree_util.tree_leaves_with_path(tree)
             if "multipliers" in jax.tree_util.keystr(k)]
    assert len(saved) == 1 and np.array_equal(np.asarray(saved[0]), lam)
    back = type(st).from_tree(tree)
    np.testing.assert_array_equal(np.asarray(back.mix_state["multipliers"]), lam)
