"""ADO: the in-step power-law fit, the sampling rule and the history buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing import ado


def _law(a, e, alpha, n):
    return np.exp(e) + np.exp(a) * n ** (-alpha)


def test_fit_recovers_known_power_laws():
    n = np.geomspace(100, 20000, 64).astype(np.float32)
    truth = np.array([[2.0, 0.7, 0.3], [4.0, 1.2, 0.6]])
    loss = np.stack([_law(*p, n) for p in truth], axis=1).astype(np.float32)
    mask = np.ones(64, bool)
    mask[:10] = False                                   # invalid points are ignored ...
    loss[:10] = np.nan                                  # ... even when they are NaN
    params, _ = ado.fit_power_law(jnp.asarray(n), jnp.asarray(loss), jnp.asarray(mask),
                                  iterations=60)
    np.testing.assert_allclose(params, truth, atol=0.05)


def test_fit_respects_the_reference_bounds():
    n = np.geomspace(10, 1000, 64).astype(np.float32)
    loss = np.stack([_law(8.0, 0.0, 1.5, n), _law(-3.0, 2.0, -0.2, n)], 1)  # outside the box
    params, _ = ado.fit_power_law(jnp.asarray(n), jnp.asarray(loss, jnp.float32),
                                  jnp.ones(64, bool), iterations=60)   # same shapes: no recompile
    for a, e, alpha in np.asarray(params):
        assert a <= 6.5 + 1e-6 and e >= 0.5 - 1e-6 and 0 <= alpha <= 0.8 + 1e-6


def test_target_distribution_by_hand():
    m = mixing.get("ado", min_probability=0.01)
    params = jnp.array([[2.0, 1.0, 0.5], [1.0, 1.0, 0.01], [3.0, 1.0, 0.2]])
    prior = jnp.array([0.5, 0.25, 0.25])
    comp = jnp.array([0.2, 0.4, 0.4])
    rho = m._target(params, jnp.float32(100.0), prior, comp)
    p = np.asarray(params)
    slope = np.maximum(p[:, 2], 0.05) * np.exp(p[:, 0]) * 100.0 ** (-p[:, 2]) / 100.0
    raw = slope * np.asarray(prior) * np.sqrt(np.asarray(comp))
    raw = np.maximum(raw / raw.sum(), 0.01)
    np.testing.assert_allclose(rho, raw / raw.sum(), rtol=1e-5)


def test_clip_min_probability_matches_reference():
    p = jnp.array([0.995, 0.004, 0.001])
    ours = np.asarray(ado.clip_min_probability(p, 0.01))
    clipped = np.maximum(np.asarray(p), 0.01)        # reference: deficit 0 when k * floor < 1
    np.testing.assert_allclose(ours, clipped / clipped.sum(), rtol=1e-6)


def test_history_blocks_prior_until_fit_and_mixing_rule():
    m = mixing.build("ado", {"start_step": 8, "ignore_steps": 2, "refit_every": 4,
                             "record_every": 2, "history": 8, "min_fit_points": 3},
                     domains=("a", "b"), token_counts=(3.0, 1.0))
    update = jax.jit(m.update)
    s = m.init(2)
    np.testing.assert_allclose(m.weights(s), [0.75, 0.25])
    ids = jnp.array([0, 0, 1, 1], jnp.int32)
    for step in range(0, 8):
        loss = jnp.array([3.0 / (1 + step) ** 0.3 + 1.7, 2.0])
        s = update(s, {"loss": loss, "count": jnp.array([2.0, 2.0]), "domain_id": ids},
                   jnp.int32(step))
        if step < 8:
            np.testing.assert_allclose(m.weights(s), [0.75, 0.25], rtol=1e-6)
    # Steps 2..7 were recorded in blocks of 2: three points, n at the block mean.
    assert int(jnp.sum(s["hist_valid"])) == 3
    np.testing.assert_allclose(s["hist_n"][:3], [14.0, 22.0, 30.0])
    np.testing.assert_allclose(s["hist_loss"][0, 1], 2.0)
    assert float(s["n_seen"]) == 32.0
    pbar = np.asarray(s["pbar"])
    s = update(s, {"loss": jnp.array([1.9, 2.0]), "count": jnp.array([2.0, 0.0]),
                   "domain_id": jnp.array([0, 0, 0, 0], jnp.int32)}, jnp.int32(8))
    assert bool(s["has_fit"])
    np.testing.assert_allclose(s["last_loss"], [1.9, 2.0])      # absent domain imputed
    rho = np.asarray(m._target(s["params"], s["n_seen"], s["prior"], s["composition"]))
    np.testing.assert_allclose(m.weights(s), 0.9 * pbar + 0.1 * rho, rtol=1e-5)
    np.testing.assert_allclose(s["pbar"], (1 - 1 / 9) * pbar + rho / 9, rtol=1e-5)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="history_decay"):
        mixing.get("ado", history_decay=1.0)
    with pytest.raises(ValueError, match="min_fit_points"):
        mixing.get("ado", history=4, min_fit_points=5)
