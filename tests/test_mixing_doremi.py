"""DoReMi update rule against a hand-computed example."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing


def _stats():
    # Sequences 0, 1 are domain 0, sequence 2 is domain 1; domain 2 is absent.
    return {
        "token_loss": jnp.array([[3.0, 1.0], [2.0, 9.0], [1.0, 1.0]]),
        "ref_token_loss": jnp.array([[1.0, 2.0], [1.0, 0.0], [2.0, 2.0]]),
        "token_mask": jnp.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        "domain_id": jnp.array([0, 0, 1], jnp.int32),
    }


def test_doremi_step_by_hand():
    m = mixing.get("doremi", eta=1.0, smoothing=0.1, vocab_size=4)
    assert m.apply_to == "loss"
    s = jax.jit(m.update)(m.init(3), _stats(), jnp.int32(1))
    # Clipped excess over counted tokens: domain 0 = (2 + 0 + 1) / 3 = 1; domain 1 = 0;
    # domain 2 keeps its initial score ln|V| = ln 4.
    np.testing.assert_allclose(s["scores"], [1.0, 0.0, math.log(4)], rtol=1e-6)
    raw = np.array([math.e, 1.0, 4.0])          # (1/3) * exp(score), normalised
    expected = 0.9 * raw / raw.sum() + 0.1 / 3
    np.testing.assert_allclose(m.weights(s), expected, rtol=1e-6)
    np.testing.assert_allclose(m.average(s), (1 / 3 + expected) / 2, rtol=1e-6)


def test_doremi_absent_domain_keeps_previous_score_and_zero_default():
    m = mixing.get("doremi")
    s = m.init(3)
    np.testing.assert_allclose(s["scores"], 0.0)        # no vocab_size: lambda_0 = 0
    s = m.update(s, _stats(), jnp.int32(1))
    only_d1 = {**_stats(), "domain_id": jnp.array([1, 1, 1], jnp.int32)}
    s2 = m.update(s, only_d1, jnp.int32(2))
    assert float(s2["scores"][0]) == pytest.approx(float(s["scores"][0]))


def test_doremi_nan_token_loss_names_the_domain():
    m = mixing.get("doremi")
    s = m.init(3)
    st = _stats()
    st["token_loss"] = st["token_loss"].at[2, 0].set(jnp.nan)     # domain 1's token
    out = jax.jit(lambda s, x: mixing.guarded_update(m, s, x, jnp.int32(1)))(s, st)
    assert int(out["nonfinite_domain"]) == 1
    np.testing.assert_array_equal(out["weights"], s["weights"])
    # NaN in a padding position (mask 0) is not a statistic: no blame, normal update.
    st = _stats()
    st["token_loss"] = st["token_loss"].at[1, 1].set(jnp.nan)
    out = mixing.guarded_update(m, s, st, jnp.int32(1))
    assert int(out["nonfinite_domain"]) == -1 and np.all(np.isfinite(out["weights"]))
