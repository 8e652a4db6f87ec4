"""Fish meta step and the ScaleBiO-style bilevel step against hand-derived updates."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax.methods import bilevel
from mixjax.methods import fish
from mixjax.mixing import grads
from grad_fakes import init_params, make_batch, token_loss_fn


def flat(tree):
    return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])


def quad_problem():
    """Three quadratic 'domains' L_d(x) = 0.5 (x - c_d)^T A_d (x - c_d)."""
    rng = np.random.default_rng(0)
    mats = []
    for _ in range(3):
        q = rng.normal(size=(4, 4))
        mats.append(q @ q.T / 4 + np.eye(4))
    centers = rng.normal(size=(3, 4))
    batches = {"A": jnp.asarray(np.stack(mats), jnp.float32),
               "c": jnp.asarray(centers, jnp.float32)}

    def loss(x, b):
        d = x["x"] - b["c"]
        return 0.5 * d @ b["A"] @ d
    return loss, batches


def test_fish_step_equals_the_sequential_loop_and_meta_interpolation():
    loss, batches = quad_problem()
    x0 = {"x": jnp.asarray([0.3, -0.2, 0.5, 0.1])}
    tx = optax.adam(0.05)
    o0 = tx.init(x0)
    new, o1, losses = fish.fish_step(loss, x0, o0, tx, batches, meta_lr=0.5)
    # the official loop, by hand: inner Adam steps over the domains, then (meta_lr/M) * delta
    p, o = x0, o0
    for d in range(3):
        b = jax.tree.map(lambda v: v[d], batches)
        g = jax.grad(loss)(p, b)
        u, o = tx.update(g, o, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(new["x"], x0["x"] + 0.5 / 3 * (p["x"] - x0["x"]), rtol=1e-5)
    np.testing.assert_allclose(o1[0].mu["x"], o[0].mu["x"], rtol=1e-6)   # inner state carried
    dom_bed, *_ = fish.fish_step(loss, x0, o0, tx, batches, meta_lr=0.5,
                                 divide_by_meta_steps=False)
    np.testing.assert_allclose(dom_bed["x"], x0["x"] + 0.5 * (p["x"] - x0["x"]), rtol=1e-5)
    assert losses.shape == (3,)


def test_fish_matches_the_gradient_matching_objective_to_second_order():
    """Averaged over domain orders, the inner SGD displacement is
    -a sum_d g_d + (a^2 / 2) grad sum_{i<j} <g_i, g_j> + O(a^3)  (Shi et al. 2022, Thm. 3.1)."""
    loss, batches = quad_problem()
    x0 = {"x": jnp.asarray([0.3, -0.2, 0.5, 0.1])}
    bs = [jax.tree.map(lambda v, d=d: v[d], batches) for d in range(3)]
    gs = [jax.grad(loss)(x0, b)["x"] for b in bs]

    def inner_product_sum(x):
        g = [jax.grad(loss)(x, b)["x"] for b in bs]
        return sum(jnp.dot(g[i], g[j]) for i, j in itertools.combinations(range(3), 2))
    grad_ip = jax.grad(inner_product_sum)(x0)["x"]

    def residual(a):
        tx = optax.sgd(a)
        deltas = []
        for order in itertools.permutations(range(3)):
            ob = jax.tree.map(lambda v: v[jnp.asarray(order)], batches)
            new, _, _ = fish.fish_step(loss, x0, tx.init(x0), tx, ob, meta_lr=1.0,
                                       divide_by_meta_steps=False)
            deltas.append(np.asarray(new["x"] - x0["x"], np.float64))
        pred = -a * sum(np.asarray(g, np.float64) for g in gs) + a ** 2 / 2 * np.asarray(grad_ip)
        return np.linalg.norm(np.mean(deltas, axis=0) - pred)

    r1, r2 = residual(0.04), residual(0.02)
    assert 5.0 < r1 / r2 < 11.0, (r1, r2)       # third order: halving a divides it by ~8


def test_fish_lm_step_visits_each_domain_of_a_stratified_batch():
    k = 4
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), k, per_domain=2)
    tx = optax.sgd(0.1)
    rng = jax.random.PRNGKey(5)
    new, _, dl = jax.jit(lambda p, o, b, r: fish.fish_lm_step(
        token_loss_fn, p, o, tx, b, r, num_domains=k, meta_lr=1.0))(params, tx.init(params),
                                                                    batch, rng)
    # by hand: the same permutation, one SGD step per domain's sub-batch
    order = np.asarray(jax.random.permutation(rng, k))
    p = params
    dom = np.asarray(batch["domain_id"])
    for d in order:
        idx = np.where(dom == d)[0]
        sub = {"tokens": batch["tokens"][idx]}
        g = jax.grad(lambda q: grads.mean_loss(token_loss_fn, q, sub))(p)
        p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
    want = jax.tree.map(lambda a, b: a + (b - a) / k, params, p)
    np.testing.assert_allclose(flat(new), flat(want), rtol=2e-4, atol=1e-6)
    assert np.all(np.asarray(dl) > 0)


def test_bilevel_step_follows_the_penalty_objective_gradients():
    k, a = 3, 10.0
    params = init_params(jax.random.PRNGKey(2))
    batch = make_batch(jax.random.PRNGKey(3), k, per_domain=2)
    val = make_batch(jax.random.PRNGKey(4), 1, per_domain=3)
    batch = {**batch, "target_tokens": val["tokens"]}
    lr_u, lr_w, lr_p = 0.1, 0.05, 0.5
    tx_u, tx_w, tx_p = optax.sgd(lr_u), optax.sgd(lr_w), optax.sgd(lr_p)
    p0 = jnp.asarray([0.2, -0.1, 0.0])
    # make u differ from w so that the p gradient is non-zero
    u0, w0 = jax.tree.map(lambda x: x * 0.9, params), params
    uwp = {"u": u0, "w": w0, "p": p0, "opt_u": tx_u.init(u0), "opt_w": tx_w.init(w0),
           "opt_p": tx_p.init(p0)}
    new, m = bilevel.bilevel_update(token_loss_fn, uwp, batch, num_domains=k, tx_u=tx_u,
                                    tx_w=tx_w, tx_p=tx_p, penalty=a)

    def F(u, w, p):   # L1(w) + a [L2(w, p) - L2(u, p)]
        lam = jax.nn.softmax(p)
        l2 = lambda th: jnp.dot(lam, grads.domain_loss_vector(token_loss_fn, th, batch, k)[0])
        return grads.mean_loss(token_loss_fn, w, {"tokens": val["tokens"]}) + a * (l2(w) - l2(u))
    gu, gw, gp = jax.grad(F, argnums=(0, 1, 2))(u0, w0, p0)
    # u is the maximiser: it ascends F, i.e. descends a*L2(u, p)
    np.testing.assert_allclose(flat(new["u"]), flat(u0) + lr_u * flat(gu), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flat(new["w"]), flat(w0) - lr_w * flat(gw), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new["p"], p0 - lr_p * gp, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(gp)).max() > 1e-4
    np.testing.assert_allclose(m["weights"], jax.nn.softmax(new["p"]), rtol=1e-6)
    method = bilevel.BilevelMethod()
    with pytest.raises(ValueError, match="penalty"):
        method.check({**method.hparams, "penalty": 0.0})
