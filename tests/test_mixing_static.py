"""Static mixers, the registry and the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing


def test_uniform_natural_temperature_manual():
    counts = (100.0, 300.0, 600.0)
    np.testing.assert_allclose(mixing.get("uniform").init(4)["weights"], [0.25] * 4)
    nat = mixing.build("natural", {}, domains=("a", "b", "c"), token_counts=counts)
    np.testing.assert_allclose(nat.init(3)["weights"], [0.1, 0.3, 0.6], rtol=1e-6)
    tmp = mixing.build("temperature", {"tau": 2.0}, domains=("a", "b", "c"), token_counts=counts)
    raw = np.sqrt([0.1, 0.3, 0.6])
    np.testing.assert_allclose(tmp.init(3)["weights"], raw / raw.sum(), rtol=1e-6)
    man = mixing.build("manual", {"weights_by_domain": {"a": 1.0, "c": 3.0}},
                       domains=("a", "b", "c"))
    np.testing.assert_allclose(man.init(3)["weights"], [0.25, 0.0, 0.75])


def test_static_update_keeps_weights_and_average():
    m = mixing.get("uniform")
    s = m.init(2)
    s2 = jax.jit(m.update)(s, {"loss": jnp.array([1.0, 2.0])}, jnp.int32(3))
    np.testing.assert_allclose(m.weights(s2), [0.5, 0.5])
    np.testing.assert_allclose(m.average(s2), [0.5, 0.5])


def test_apply_to_override_and_errors():
    assert mixing.get("uniform").apply_to == "sampling"
    assert mixing.get("uniform", apply_to_override="loss").apply_to == "loss"
    with pytest.raises(ValueError, match="apply_to"):
        mixing.get("uniform", apply_to_override="sideways")
    with pytest.raises(KeyError, match="unknown mixer 'nope'"):
        mixing.get("nope")
    with pytest.raises(TypeError, match="no hyperparameter"):
        mixing.get("temperature", taux=3)
    with pytest.raises(ValueError, match="unknown domain"):
        mixing.build("manual", {"weights_by_domain": {"zz": 1.0}}, domains=("a",)).init(1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        mixing.get("temperature", tau=0.0)


@pytest.mark.parametrize("w, msg", [
    ([0.5, 0.6], "sum to 1"), ([1.5, -0.5], "negative"), ([np.nan, 1.0], "not finite"),
    ([1.0], "1 weights for 2 domains")])
def test_check_weight_vector_errors_name_domain(w, msg):
    with pytest.raises(ValueError, match=msg):
        mixing.check_weight_vector(w, ("code", "news"))


def test_guarded_update_names_nonfinite_domain():
    class Echo(mixing.Mixer):  # weights = softmax(loss): NaN in, NaN out
        requires = frozenset({"loss"})

        def update(self, state, stats, step):
            return mixing.record_weights(state, jax.nn.softmax(stats["loss"]))

    m = Echo()
    s = m.init(3)
    good = mixing.guarded_update(m, s, {"loss": jnp.array([0.0, 1.0, 2.0])}, 0)
    assert int(good["nonfinite_domain"]) == -1
    bad = mixing.guarded_update(m, good, {"loss": jnp.array([0.0, jnp.nan, 2.0])}, 1)
    assert int(bad["nonfinite_domain"]) == 1
    np.testing.assert_array_equal(bad["weights"], good["weights"])
