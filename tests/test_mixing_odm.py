"""ODM (EXP3 and smoothed mean) update rules against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import mixing


def _stats(loss, pi=None, b=3):
    k = len(loss)
    return {"loss": jnp.asarray(loss, jnp.float32), "count": jnp.ones((k,)),
            "domain_id": jnp.arange(b, dtype=jnp.int32) % k,
            "sampling_weights": jnp.full((k,), 1.0 / k) if pi is None else jnp.asarray(pi)}


def test_odm_exp3_step_by_hand():
    m = mixing.get("odm", warmup_steps=0, draws_per_batch=1)
    assert m.apply_to == "sampling"
    # 0-based step 3 is the reference's iteration t = 4
    s = jax.jit(m.update)(m.init(3), _stats([1.0, 2.0, 3.0]), jnp.int32(3))
    reward = 0.1 * np.array([1.0, 2.0, 3.0]) / (1 / 3)          # (L / 10) / pi
    np.testing.assert_allclose(s["reward"], reward, rtol=1e-6)
    eps = math.sqrt(math.log(3) / (3 * 4))                       # < 1/3
    soft = np.exp(reward / 3) / np.exp(reward / 3).sum()         # eps_{t-1} = 1/K initially
    w = (1 - 3 * eps) * soft + eps
    np.testing.assert_allclose(m.weights(s), w / w.sum(), rtol=1e-6)
    assert float(s["eps"]) == np.float32(eps)


def test_odm_presence_probability_with_many_draws():
    m = mixing.get("odm", warmup_steps=0, draws_per_batch=4)
    s = m.update(m.init(2), _stats([1.0, 1.0], pi=[0.25, 0.75]), jnp.int32(5))
    q = 1 - (1 - np.array([0.25, 0.75])) ** 4
    np.testing.assert_allclose(s["reward"], 0.1 / q, rtol=1e-5)


def test_odm_warmup_and_update_frequency():
    m = mixing.build("odm", {"warmup_steps": 10, "update_every": 2}, domains=("a", "b"),
                     token_counts=(1.0, 3.0))
    s0 = m.init(2)
    np.testing.assert_allclose(s0["weights"], [0.25, 0.75])      # natural prior
    for step in (2, 9, 10):                     # t = step + 1: warm-up, then odd t
        s = m.update(s0, _stats([5.0, 1.0]), jnp.int32(step))
        np.testing.assert_array_equal(s["weights"], s0["weights"])
        np.testing.assert_array_equal(s["reward"], 0.0)
    s = m.update(s0, _stats([5.0, 1.0]), jnp.int32(11))        # t = 12
    assert float(s["weights"][0]) > 0.25                         # higher loss gains weight


def test_odm_smoothed_mean_step_by_hand():
    m = mixing.get("odm_smoothed", warmup_steps=0)
    st = _stats([1.0, 2.0, 3.0])
    st["count"] = jnp.array([1.0, 1.0, 0.0])                      # domain 2 absent
    s = jax.jit(m.update)(m.init(3), st, jnp.int32(3))          # t = 4
    r = np.array([0.1 * math.e, 0.1 * math.e ** 2, 0.0])
    np.testing.assert_allclose(s["reward"], r, rtol=1e-6)
    eps = math.sqrt(math.log(3) / 12)
    w = (1 - 3 * eps) * r / r.sum() + eps
    np.testing.assert_allclose(m.weights(s), w / w.sum(), rtol=1e-6)
