"""tDRO update rule against a hand-computed example."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import mixing


def test_tdro_ratio_clip_and_ascent_by_hand():
    m = mixing.get("tdro", step_size=0.5)
    assert m.apply_to == "loss"
    stats = {
        "token_loss": jnp.array([[2.0, 2.0], [4.0, 4.0], [1.0, 1.0]]),
        "ref_token_loss": jnp.array([[1.0, 1.0], [2.0, 2.0], [5e-5, 5e-5]]),
        "token_mask": jnp.ones((3, 2)),
        "domain_id": jnp.array([0, 0, 1], jnp.int32),
    }
    s = jax.jit(m.update)(m.init(3), stats, jnp.int32(1))
    # ratios 2, 2 (domain 0) and 1 / 1 (ref < 1e-4 -> 1) for domain 1; domain 2 absent: 0.
    g = np.array([2.0, 1.0, 0.0])
    g = g / np.sqrt(5.0)                              # clipped to norm 1
    z = np.log(np.full(3, 1 / 3)) + 0.5 * g
    np.testing.assert_allclose(m.weights(s), np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    np.testing.assert_allclose(np.exp(s["logits"]), m.weights(s), rtol=1e-6)


def test_tdro_small_gradient_is_not_clipped():
    m = mixing.get("tdro", step_size=1.0, max_grad_norm=10.0)
    stats = {"token_loss": jnp.array([[1.0], [3.0]]), "ref_token_loss": jnp.array([[2.0], [2.0]]),
             "token_mask": jnp.ones((2, 1)), "domain_id": jnp.array([0, 1], jnp.int32)}
    s = m.update(m.init(2), stats, jnp.int32(1))
    z = np.array([0.5, 1.5])
    np.testing.assert_allclose(m.weights(s), np.exp(z) / np.exp(z).sum(), rtol=1e-6)
