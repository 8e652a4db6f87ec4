"""DomainBed's remaining algorithms (TRM, MTL, ARM, Transfer, URM): each rule equals a numpy
statement of DomainBed's code (facebookresearch/DomainBed ``domainbed/algorithms.py``,
``networks.py``, ``lib/misc.py``, commit b93c22a) on tiny generated inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg.networks import NetSpec

RNG = np.random.default_rng(0)
NET = NetSpec(input_shape=(4, 4, 1), num_classes=2, featurizer="mlp", mlp_width=8)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(logits, y):
    return -np.log(softmax(logits)[np.arange(len(y)), y]).mean()


def np_head_grads(w, b, z, y):
    """d CE(z w + b, y) / d(w, b) for a linear head."""
    p = softmax(z @ w + b)
    p[np.arange(len(y)), y] -= 1
    return z.T @ p / len(y), p.mean(0)


def np_hvp(w, b, z, y, v):
    """Hessian of CE(z w + b, y) in w times v (both [D, C])."""
    p = softmax(z @ w + b)
    dl = z @ v
    dp = p * dl - p * (p * dl).sum(1, keepdims=True)
    return z.T @ dp / len(y)


def np_neum(v, hvp):
    """DomainBed ``TRM.neum`` transcribed line by line; numpy's in-place ``-=`` aliases ``v`` and
    ``h_estimate`` exactly as torch's does."""
    v = v.copy()
    h_estimate = v
    for _ in range(10):
        hv = hvp(v)
        v -= hv
        h_estimate = v + h_estimate
        if np.max(np.abs(h_estimate)) > 10:
            break
    return h_estimate


def np_trm_swap(heads_w, heads_b, z, ys, alpha, cos_lambda, eta):
    """DomainBed TRM.update after ``iters``: heads after 30 SGD(0.1) steps, loss_swap, alpha."""
    k = len(z)
    alpha = alpha / alpha.sum(1, keepdims=True)
    w, b = heads_w.copy(), heads_b.copy()
    for _ in range(30):
        for j in range(k):
            gw, gb = np_head_grads(w[j], b[j], z[j], ys[j])
            w[j] -= 0.1 * gw
            b[j] -= 0.1 * gb
    swap, us, alpha_new = 0.0, [], alpha.copy()
    for q in range(k):
        others = [i for i in range(k) if i != q]
        loss_p = {i: np_ce(z[i] @ w[q] + b[q], ys[i]) * alpha[q, i] for i in others}
        grad_p = sum(alpha[q, i] * np_head_grads(w[q], b[q], z[i], ys[i])[0] for i in others)
        u = np_neum(grad_p, lambda v: np_hvp(w[q], b[q], z[q], ys[q], v))  # noqa: B023
        grad_q = np_head_grads(w[q], b[q], z[q], ys[q])[0]
        swap += sum(loss_p.values()) - cos_lambda * (u * grad_q).sum()
        for i in others:
            alpha_new[q, i] *= np.exp(eta * loss_p[i])
        us.append(u)
    return swap / k, alpha_new, (w, b), us


def test_trm_heads_neumann_transfer_risk_and_alpha():
    from mixjax.dg.algorithms.trm import fit_heads, neumann, transfer_risk

    k, n, d, c = 3, 5, 3, 2
    z = RNG.normal(size=(k, n, d))
    ys = RNG.integers(0, c, (k, n))
    hw, hb = RNG.normal(size=(k, d, c)), RNG.normal(size=(k, c)) * 0.1
    alpha = np.ones((k, k)) - np.eye(k)
    alpha[0, 2] = 3.0  # a row that is not uniform after normalisation
    cos_lambda, eta = 0.3, 0.5
    swap, alpha_new, (fw, fb), us = np_trm_swap(hw, hb, z, ys, alpha, cos_lambda, eta)

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    heads = fit_heads({"w": f32(hw), "b": f32(hb)}, f32(z), jnp.asarray(ys))
    np.testing.assert_allclose(heads["w"], fw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(heads["b"], fb, rtol=1e-4, atol=1e-5)
    an = alpha / alpha.sum(1, keepdims=True)
    got, got_alpha = transfer_risk(heads, f32(z), jnp.asarray(ys), f32(an), cos_lambda, eta)
    assert float(got) == pytest.approx(swap, rel=1e-4)
    np.testing.assert_allclose(got_alpha, alpha_new, rtol=1e-5)

    # the Neumann estimate alone, including an early stop (a big vector crosses the bound)
    v = RNG.normal(size=(d, c))
    hvp = lambda vec: np_hvp(fw[1], fb[1], z[1], ys[1], vec)  # noqa: E731
    jhvp = lambda vec: jnp.asarray(hvp(np.asarray(vec, np.float64)), jnp.float32)  # noqa: E731
    for scale in (1.0, 4.0):
        expected = np_neum(scale * v, hvp)
        got_u = neumann(f32(scale * v), lambda vec: jax.pure_callback(jhvp, jax.ShapeDtypeStruct((d, c), jnp.float32), vec))
        np.testing.assert_allclose(got_u, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(np_neum(4.0 * v, hvp)).max() > 10  # the bound was hit

    # gradient wrt the features: the value uses the old alpha, the gradient the updated one
    # (DomainBed multiplies by ``alpha[Q, i].data.detach()``, then updates alpha in place)
    def np_f(zz):
        total = 0.0
        for q in range(k):
            for i in range(k):
                if i != q:
                    total += alpha_new[q, i] * np_ce(zz[i] @ fw[q] + fb[q], ys[i])
            total -= cos_lambda * (us[q] * np_head_grads(fw[q], fb[q], zz[q], ys[q])[0]).sum()
        return total / k

    eps, fd = 1e-6, np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        dz = np.zeros_like(z)
        dz[idx] = eps
        fd[idx] = (np_f(z + dz) - np_f(z - dz)) / (2 * eps)
    g = jax.grad(lambda zz: transfer_risk(heads, zz, jnp.asarray(ys), f32(an), cos_lambda, eta)[0])(f32(z))
    np.testing.assert_allclose(g, fd, rtol=2e-3, atol=2e-5)


def test_trm_switches_from_erm_at_iters():
    from mixjax.dg.algorithms.trm import TRM

    alg = TRM(net=NET, num_envs=3)
    hp = {"lr": 1e-3, "weight_decay": 0.0, "cos_lambda": 1e-2, "iters": 2.0, "groupdro_eta": 1e-2}
    state = alg.init(jax.random.key(0), hp)
    xs = jnp.asarray(RNG.normal(size=(3, 4, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (3, 4)), jnp.int32)
    upd = jax.jit(alg.update)
    heads0 = state["heads"]
    for t in range(3):
        state, m = upd(hp, state, xs, ys, jax.random.key(t))
        if t < 2:  # ERM: heads, alpha untouched, no transfer term
            assert float(m["trm_loss"]) == 0.0
            assert np.array_equal(state["heads"]["w"], heads0["w"])
    assert float(m["trm_loss"]) != 0.0 and not np.array_equal(state["heads"]["w"], heads0["w"])
    alpha = np.asarray(state["alpha"])
    assert np.all(np.diag(alpha) == 0) and np.all(alpha[~np.eye(3, dtype=bool)] > 0.5)
