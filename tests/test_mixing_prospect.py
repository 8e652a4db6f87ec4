"""Prospect (mixjax.mixing.prospect): the penalised spectral-risk weights against the reference's
pool-adjacent-violators route restated in numpy, and the weights inside the real step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing import prospect

_weights = jax.jit(prospect.penalised_weights, static_argnums=(2, 3))


def _pav(c, block_value):
    """Pool adjacent violators (ronakdm/prospect smoothing.py): blocks of indices, merged
    while the previous block's value is >= the last one's; returns the fit per index."""
    blocks = []
    for i in range(len(c)):
        blocks.append([i])
        while len(blocks) > 1 and block_value(blocks[-2]) >= block_value(blocks[-1]):
            last = blocks.pop()
            blocks[-1] = blocks[-1] + last
    out = np.zeros(len(c))
    for blk in blocks:
        out[blk] = block_value(blk)
    return out


def _lse(x):
    x = np.asarray(x, np.float64)
    m = np.max(x)
    return m if m == -np.inf else m + np.log(np.sum(np.exp(x - m)))


def numpy_weights(loss, sigma, nu, penalty):
    n = len(loss)
    perm = np.argsort(loss, kind="stable")
    ls = np.asarray(loss, np.float64)[perm]
    if nu == 0:
        q = sigma
    elif penalty == "chi2":
        c = ls / (n * nu) + 1 / n - sigma
        y = _pav(c, lambda b: c[b].mean())
        q = ls / (n * nu) - y + 1 / n
    else:
        x = ls / nu
        with np.errstate(divide="ignore"):
            logs = np.log(sigma)
        y = _pav(x, lambda b: _lse(x[b]) - _lse(logs[b]) - np.log(n))
        q = np.exp(x - y) / n
    out = np.empty(n)
    out[perm] = q
    return out


def test_spectra_match_the_reference_formulas():
    n = 10
    e = prospect.spectrum(n, "extremile", 2.0)
    np.testing.assert_allclose(e, ((np.arange(n) + 1) ** 2 - np.arange(n) ** 2) / n ** 2)
    c = prospect.spectrum(n, "cvar", 0.75)      # top 2.5 of 10: weights 0.2, 0.4, 0.4
    np.testing.assert_allclose(c[-3:], [0.2, 0.4, 0.4])
    assert np.all(c[:-3] == 0)
    for kind, p in [("extremile", 3.0), ("esrm", 2.0), ("cvar", 0.5), ("erm", 0.0)]:
        s = prospect.spectrum(n, kind, p)
        assert abs(s.sum() - 1) < 1e-12 and np.all(np.diff(s) >= -1e-15), kind


def test_weights_match_numpy_pav():
    rng = np.random.default_rng(7)
    n = 12
    cases = [(p, k, lv, nu) for p in ("chi2", "kl")
             for k, lv in (("extremile", 2.0), ("esrm", 1.0), ("cvar", 0.5))
             for nu in (0.05, 1.0)] + [("chi2", "esrm", 1.0, 0.0)]
    for penalty, kind, level, nu in cases:
        loss = rng.gamma(2.0, 1.0, n)
        loss[1] = loss[3]                        # a tie
        sigma = prospect.spectrum(n, kind, level)
        want = numpy_weights(loss, sigma, nu, penalty)
        got = np.asarray(_weights(jnp.asarray(loss, jnp.float32),
                                  jnp.asarray(sigma, jnp.float32), nu, penalty))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                                   err_msg=f"{penalty} {kind} nu={nu}")
        assert abs(got.sum() - 1) < 1e-5 and np.all(got >= -1e-6)


def test_weights_are_the_maximiser():
    """q.l - nu D(q) at q is >= its value at random points of the permutahedron (chi2)."""
    rng = np.random.default_rng(1)
    n, nu = 8, 0.3
    loss = rng.normal(size=n)
    sigma = prospect.spectrum(n, "extremile", 2.0)
    q = np.asarray(_weights(jnp.asarray(loss), jnp.asarray(sigma), nu, "chi2"), np.float64)

    def obj(v):
        return v @ loss - nu * n / 2 * np.sum((v - 1 / n) ** 2)

    for _ in range(200):
        lam = rng.dirichlet(np.ones(4))
        v = sum(w * sigma[rng.permutation(n)] for w in lam)
        assert obj(q) >= obj(v) - 1e-6
    # a large shift cost pulls q to uniform; nu = 0 is the sorted spectrum
    big = _weights(jnp.asarray(loss), jnp.asarray(sigma), 1e4, "kl")
    np.testing.assert_allclose(np.asarray(big), np.full(n, 1 / n), atol=1e-3)


def test_mixer_weights_and_bad_hyperparameters():
    m = mixing.get("prospect", spectrum="cvar", level=0.5, shift_cost=0.0, burn_in=2)
    st = m.init(3)
    loss = jnp.asarray([1.0, 4.0, 2.0, 3.0])
    stats = {"sample_loss": loss, "token_mask": jnp.ones((4, 5))}
    assert np.allclose(m.example_weights(m.update(st, stats, 1), stats), 1.0)   # burn-in
    w = np.asarray(m.example_weights(m.update(st, stats, 2), stats))
    np.testing.assert_allclose(w, [0.0, 2.0, 0.0, 2.0])            # top half of 4, mean 1
    for hp in ({"spectrum": "cvar", "level": 1.0}, {"penalty": "tv"}, {"shift_cost": -1.0},
               {"spectrum": "extremile", "level": 0.5}):
        with pytest.raises(ValueError, match="prospect"):
            mixing.get("prospect", **hp)


def test_step_objective_is_the_weighted_sequence_loss():
    """In the real step, with equal token counts: objective = sum_b q_b l_b."""
    import optax
    import sharding_harness as H
    from mixjax.core import state as state_lib
    from mixjax.core import step as step_lib

    m = mixing.get("prospect", spectrum="extremile", level=2.0, shift_cost=0.1)
    params, _ = H.bigram_init(0)
    tx = optax.sgd(0.1)
    fn = step_lib.make_train_step(apply=H.bigram_apply, mixer=m, tx=tx, num_domains=2, pad_id=0,
                                  donate=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, H.VOCAB, (6, 9)).astype(np.int32)
    batch = {"tokens": tokens, "domain_id": np.array([0, 1] * 3, np.int32),
             "sampling_weights": np.array([0.5, 0.5], np.float32)}
    st = state_lib.init_state(params, tx, m, 2, seed=0)
    _, metrics = fn(st, batch)
    tl, tm = step_lib.token_losses(H.bigram_apply, params, jnp.asarray(tokens), 0)
    seq = np.asarray(step_lib.sequence_loss(tl, tm), np.float64)
    q = numpy_weights(seq, prospect.spectrum(6, "extremile", 2.0), 0.1, "chi2")
    assert math.isclose(float(metrics["objective"]), float(q @ seq), rel_tol=1e-5)
    assert float(metrics["objective"]) > seq.mean()       # it upweights the larger losses
