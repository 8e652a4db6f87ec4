"""Gradient aggregators (PCGrad, MGDA, UPGrad) against numpy statements of torchjd.

The references (TorchJD/torchjd src/torchjd/aggregation/_pcgrad.py, _mgda.py,
_upgrad.py, _utils/gramian.py, _utils/dual_cone.py) are written out in numpy on
random Jacobians; UPGrad's QPs ``min v^T G v s.t. v >= u_i e_i`` (quadprog in
torchjd) are solved independently as bounded least squares
``min ||A^T v||^2`` with ``A A^T = G`` (scipy's BVLS).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import lsq_linear

from mixjax import mixing
from mixjax.mixing import grads
from mixjax.mixing import aggregators as agg
from mixjax.mixing import statistics


def _jacobians(seed, k=6, p=20):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=p)
    # shared direction plus conflicts: some rows oppose others
    j = rng.normal(size=(k, p)) + rng.choice([-1.5, 1.0], size=(k, 1)) * base
    return j * rng.uniform(0.2, 3.0, size=(k, 1))


def _pcgrad_ref(gram, orders):
    k = gram.shape[0]
    weights = np.zeros(k)
    for i in range(k):
        cur = np.zeros(k)
        cur[i] = 1.0
        for j in orders[i]:
            if j == i:
                continue
            ip = gram[j] @ cur
            if ip < 0.0:
                cur[j] -= ip / gram[j, j]
        weights += cur
    return weights


def _mgda_ref(gram, epsilon=1e-3, max_iters=100):
    k = gram.shape[0]
    alpha = np.ones(k) / k
    for _ in range(max_iters):
        t = np.argmin(gram @ alpha)
        e = np.zeros(k)
        e[t] = 1.0
        a, b, c = alpha @ (gram @ e), alpha @ (gram @ alpha), e @ (gram @ e)
        gamma = 1.0 if c <= a else 0.0 if b <= a else (b - a) / (b + c - 2 * a)
        alpha = (1 - gamma) * alpha + gamma * e
        if gamma < epsilon:
            break
    return alpha


def _upgrad_ref(jac, pref, norm_eps=1e-4, reg_eps=1e-4):
    k = jac.shape[0]
    tr = np.trace(jac @ jac.T)
    a = np.zeros_like(jac) if tr < norm_eps else jac / np.sqrt(tr)
    # G + reg I = A A^T with A = [jac/sqrt(tr), sqrt(reg) I]
    a = np.concatenate([a, np.sqrt(reg_eps) * np.eye(k)], axis=1)
    w = np.zeros(k)
    for i in range(k):
        lower = np.zeros(k)
        lower[i] = pref[i]
        res = lsq_linear(a.T, np.zeros(a.shape[1]), bounds=(lower, np.inf), method="bvls",
                         tol=1e-14)
        w += res.x
    return w


_pcgrad = jax.jit(agg.pcgrad_weights)
_mgda = jax.jit(agg.mgda_weights)
_upgrad = jax.jit(agg.upgrad_weights)


def test_pcgrad_matches_reference():
    for seed in range(4):
        jac = _jacobians(seed)
        gram = jac @ jac.T
        k = gram.shape[0]
        orders = np.stack([np.random.default_rng(seed + i).permutation(k) for i in range(k)])
        got = _pcgrad(jnp.asarray(gram, jnp.float32), jnp.asarray(orders))
        np.testing.assert_allclose(got, _pcgrad_ref(gram, orders), rtol=2e-4, atol=1e-5)


def test_pcgrad_mixer_is_deterministic_per_step():
    jac = _jacobians(7)
    m = mixing.get("pcgrad", seed=3)
    stats = {"gram": jnp.asarray(jac @ jac.T, jnp.float32), "count": jnp.ones(6)}
    update = jax.jit(m.update)
    a = update(m.init(6), stats, jnp.int32(5))
    b = update(m.init(6), stats, jnp.int32(5))
    np.testing.assert_array_equal(a["coeffs"], b["coeffs"])
    orders = np.asarray(jax.jit(m.orders, static_argnums=0)(6, jnp.int32(5)))
    np.testing.assert_allclose(a["coeffs"], _pcgrad_ref(jac @ jac.T, orders), rtol=2e-4)
    np.testing.assert_allclose(a["weights"], a["coeffs"] / a["coeffs"].sum(), rtol=1e-6)
    assert m.apply_to == "loss" and m.requires == {"gram", "count"}


def test_mgda_matches_reference():
    for seed in range(4):
        jac = _jacobians(seed)
        gram = jac @ jac.T
        got = _mgda(jnp.asarray(gram, jnp.float32))
        want = _mgda_ref(gram)
        np.testing.assert_allclose(got, want, atol=2e-4)
        assert float(jnp.sum(got)) == pytest.approx(1.0, abs=1e-5)


def test_upgrad_matches_reference_and_never_conflicts():
    rng = np.random.default_rng(0)
    for seed in range(6):
        jac = _jacobians(seed)
        k = jac.shape[0]
        pref = np.full(k, 1.0 / k) if seed < 3 else rng.dirichlet(np.ones(k))
        got = np.asarray(_upgrad(jnp.asarray(jac @ jac.T, jnp.float32),
                                 jnp.asarray(pref, jnp.float32)))
        want = _upgrad_ref(jac, pref)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5)
        # the aggregated update J^T w does not conflict with any domain gradient, up to the
        # reg_eps ridge: (G/tr + eps I) w >= 0 at the solution
        gram = jac @ jac.T
        slack = 1e-4 * np.trace(gram) * got + 1e-5 * np.abs(gram).max() * got.sum()
        assert np.all(gram @ got >= -slack)


def test_upgrad_target_preference_and_absent_domains():
    jac = _jacobians(11, k=4)
    gt = jac[0] + 0.1 * jac[1]            # a target aligned with domain 0
    m = mixing.get("upgrad_target", temperature=0.1)
    assert "target_batch" in statistics.needs_of(m.requires) and "grad_dot" in m.requires
    stats = {"gram": jnp.asarray(jac @ jac.T, jnp.float32),
             "grad_dot": jnp.asarray(jac @ gt, jnp.float32),
             "target_grad_norm": jnp.asarray(np.linalg.norm(gt), jnp.float32),
             "count": jnp.ones(4)}
    s = jax.jit(m.update)(m.init(4), stats, jnp.int32(0))
    cos = jac @ gt / (np.linalg.norm(jac, axis=1) * np.linalg.norm(gt))
    pref = np.exp(cos / 0.1) / np.exp(cos / 0.1).sum()
    np.testing.assert_allclose(s["coeffs"], _upgrad_ref(jac, pref), rtol=2e-3, atol=2e-5)
    # the target preference tilts the update towards the target gradient
    plain = mixing.get("upgrad")
    u = jax.jit(plain.update)(plain.init(4), stats, jnp.int32(0))
    cos_of = lambda c: (jac.T @ c) @ gt / np.linalg.norm(jac.T @ c)  # noqa: E731
    assert cos_of(np.asarray(s["coeffs"])) > cos_of(np.asarray(u["coeffs"]))
    # an absent domain (rows layout) gets no weight; the rest solve the smaller problem
    for name in ("pcgrad", "mgda", "upgrad"):
        mm = mixing.get(name)
        st = {"gram": jnp.asarray(jac @ jac.T, jnp.float32) * jnp.asarray([1, 1, 0, 1])[:, None]
              * jnp.asarray([1, 1, 0, 1])[None, :], "count": jnp.asarray([3.0, 3.0, 0.0, 3.0])}
        out = jax.jit(mm.update)(mm.init(4), st, jnp.int32(0))
        if name == "mgda":
            mgda_out = out
        assert float(out["coeffs"][2]) == 0.0 and np.all(np.isfinite(out["weights"]))
        assert float(jnp.sum(out["weights"])) == pytest.approx(1.0, abs=1e-5)
    sub = jac[[0, 1, 3]]
    np.testing.assert_allclose(np.asarray(mgda_out["coeffs"])[[0, 1, 3]], _mgda_ref(sub @ sub.T),
                               atol=2e-4)


def test_aggregators_need_the_gram_matrix_not_jvp():
    for name in ("pcgrad", "mgda", "upgrad", "upgrad_target"):
        m = mixing.get(name)
        with pytest.raises(ValueError, match="jvp.*cannot supply|cannot supply"):
            grads.check_request(grads.GradConfig(strategy="jvp"), m.requires & {"gram"},
                                who=f"mixer {name!r}")
