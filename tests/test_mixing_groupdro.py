"""GroupDRO update rule against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing


def test_groupdro_exponentiated_step_by_hand():
    m = mixing.get("groupdro", step_size=0.5)
    assert m.apply_to == "loss" and m.requires == {"loss", "count"}
    s = m.init(3)
    # Domain 2 is absent: its loss counts as 0 (not boosted), whatever the stat says.
    s = jax.jit(m.update)(s, {"loss": jnp.array([1.0, 2.0, 7.0]),
                              "count": jnp.array([5.0, 5.0, 0.0])}, jnp.int32(1))
    e = np.array([np.exp(0.5), np.exp(1.0), 1.0])
    np.testing.assert_allclose(m.weights(s), e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(m.average(s), (np.full(3, 1 / 3) + e / e.sum()) / 2, rtol=1e-6)


def test_groupdro_generalization_adjustment_uses_token_counts():
    m = mixing.build("groupdro", {"step_size": 1.0, "generalization_adjustment": 2.0},
                     domains=("a", "b"), token_counts=(4.0, 16.0))
    s = m.update(m.init(2), {"loss": jnp.array([1.0, 1.0]), "count": jnp.array([1.0, 1.0])},
                 jnp.int32(1))
    a = np.array([1.0 + 2.0 / 2.0, 1.0 + 2.0 / 4.0])       # L + C / sqrt(n)
    np.testing.assert_allclose(m.weights(s), np.exp(a) / np.exp(a).sum(), rtol=1e-6)


def test_groupdro_bad_hyperparameters():
    with pytest.raises(ValueError, match="token_counts"):
        mixing.get("groupdro", generalization_adjustment=1.0).init(2)
    with pytest.raises(ValueError, match="step_size"):
        mixing.get("groupdro", step_size=-1.0)
