"""Sample-level loss reweighting against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.mixing import sample_reweight


@pytest.mark.parametrize("shape, f", [
    ("quadratic", [0.0, 1.0, 0.0]), ("linupper", [0.0, 1.0, 1.0]),
    ("extremes", [1.0, 0.0, 1.0]), ("upper", [0.0, 0.5, 1.0])])
def test_shapes_by_hand(shape, f):
    rw = sample_reweight.get(shape, temperature=0.5, burn_in=10)
    w = jax.jit(rw.sample_weights)(jnp.array([1.0, 2.0, 3.0]), jnp.int32(10))  # h = -1, 0, 1
    e = np.exp((np.array(f) - max(f)) / 0.5)
    np.testing.assert_allclose(w, 3 * e / e.sum(), rtol=1e-6)
    assert float(jnp.mean(w)) == pytest.approx(1.0, rel=1e-6)


def test_burn_in_equal_losses_and_invalid_entries():
    rw = sample_reweight.get("quadratic", burn_in=100)
    np.testing.assert_array_equal(rw(jnp.array([1.0, 5.0]), jnp.int32(99)), [1.0, 1.0])
    np.testing.assert_allclose(rw(jnp.array([2.0, 2.0, 2.0]), 100), [1.0, 1.0, 1.0])
    # A NaN loss and a sequence without tokens keep weight 1; the rest share mean 1.
    w = rw.sample_weights(jnp.array([1.0, jnp.nan, 3.0, 2.0, 9.0]), 100,
                          valid=jnp.array([True, True, True, True, False]))
    assert w[1] == 1.0 and w[4] == 1.0
    e = np.array([math.exp(-1), math.exp(-1), 1.0])             # h = -1, 1, 0
    np.testing.assert_allclose(np.asarray(w)[[0, 2, 3]], 3 * e / e.sum(), rtol=1e-6)


def test_functional_form_and_errors():
    w = sample_reweight.sample_weights(jnp.array([1.0, 3.0]), 5, shape="extremes", burn_in=0)
    np.testing.assert_allclose(w, [1.0, 1.0])                  # |h| = 1 for both
    with pytest.raises(KeyError, match="unknown sample-reweighting shape"):
        sample_reweight.get("cubic")
    with pytest.raises(TypeError, match="no hyperparameter"):
        sample_reweight.get("quadratic", temp=1.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_reweight.get("quadratic", temperature=0.0)
