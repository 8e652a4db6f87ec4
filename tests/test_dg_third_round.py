"""XDED and SDAT (mixjax.dg.algorithms.xded / sdat) against their rules restated in numpy:
the same-label ensemble teacher and KD loss (leekyungmoon/XDED), SAM on the task loss only
inside DANN (val-iisc/SDAT)."""

import jax
import jax.numpy as jnp
import numpy as np

from dg_fakes import build_tiny, tiny_batches


def np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def test_xded_loss_is_ce_plus_kd_to_the_same_label_mean():
    alg, hp = build_tiny("xded")
    assert (float(hp["xded_lambda"]), float(hp["xded_temp"])) == (5.0, 4.0)   # the code's defaults
    xs, ys = tiny_batches()
    state = alg.init(jax.random.key(0), hp)
    loss, m = jax.jit(alg.loss)(state["params"], hp, state, xs, ys, jax.random.key(1))
    f = np.asarray(jax.jit(alg.env_logits)(state["params"], xs)).reshape(8, 3).astype(np.float64)
    y = np.asarray(ys).reshape(8)
    teacher = np.stack([f[y == y[i]].mean(0) for i in range(8)])      # pixelwise_XDEDLoss's rule
    t = 4.0
    log_p, log_q = np_log_softmax(f / t), np_log_softmax(teacher / t)
    kd = (np.exp(log_q) * (log_q - log_p)).sum() * t * t / 8           # KLDivLoss(sum) * T^2 / n
    ce = -np_log_softmax(f)[np.arange(8), y].mean()
    np.testing.assert_allclose(float(m["xded_loss"]), kd, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss), ce + 5.0 * kd, rtol=1e-5)
    # the teacher is detached: the gradient is that of CE + lambda KD(f, constant teacher)
    from mixjax.dg.algorithms.xded import kd_loss

    def fixed(p):
        lg = alg.env_logits(p, xs).reshape(8, 3)
        ce_ = -jnp.take_along_axis(jax.nn.log_softmax(lg), jnp.asarray(y)[:, None], 1).mean()
        return ce_ + 5.0 * kd_loss(lg, jnp.asarray(teacher, jnp.float32), 4.0)

    got = jax.jit(jax.grad(lambda p: alg.loss(p, hp, state, xs, ys, None)[0]))(state["params"])
    want = jax.jit(jax.grad(fixed))(state["params"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sdat_perturbs_along_the_task_loss_only():
    alg, hp = build_tiny("sdat", rho=0.5, mlp_width=16, **{"lambda": 10.0})
    xs, ys = tiny_batches(1)
    state = alg.init(jax.random.key(0), hp)
    new, _ = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(1))
    assert int(new["step"]) == 1          # DomainBed counts from 1: step 1 is a generator step
    params, disc = state["params"], state["disc"]
    flat = lambda t: np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(t)])  # noqa: E731
    g_task = jax.jit(jax.grad(lambda p: alg._losses(p, disc, hp, xs, ys)[1]))(params)
    g_vec = flat(g_task)
    eps_vec = 0.5 * g_vec / (np.linalg.norm(g_vec) + 1e-12)            # rho g / (||g|| + 1e-12)
    leaves, treedef = jax.tree.flatten(params)
    sizes = np.cumsum([0] + [np.size(v) for v in leaves])
    eps = jax.tree.unflatten(treedef, [jnp.asarray(eps_vec[a:b].reshape(np.shape(v)), jnp.float32)
                                       for a, b, v in zip(sizes[:-1], sizes[1:], leaves)])
    at = jax.tree.map(jnp.add, params, eps)
    gen = lambda p: (lambda d, n: n - 10.0 * d)(*alg._losses(p, disc, hp, xs, ys))  # noqa: E731
    grad_gen = jax.jit(jax.grad(gen))
    g_hat = flat(grad_gen(at))
    # torch Adam's first step (weight decay 0): theta - lr * g / (|g| + 1e-8)
    want = flat(params) - 1e-3 * g_hat / (np.abs(g_hat) + 1e-8)
    np.testing.assert_allclose(flat(new["params"]), want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(flat(new["disc"]), flat(disc))              # D waits for its own step
    # a SAM step on the whole adversarial loss would perturb elsewhere and land elsewhere
    g_all = flat(grad_gen(params))
    assert abs(g_all @ g_vec) / (np.linalg.norm(g_all) * np.linalg.norm(g_vec)) < 0.999


def test_dmg_masks_straight_through_overlap_and_test_rule():
    from mixjax.dg.algorithms.dmg import overlap_penalty

    alg, hp = build_tiny("dmg")
    assert float(hp["dmg_overlap"]) == np.float32(0.1)                # OVERLAP_LAMBDA
    xs, ys = tiny_batches(2)
    state = alg.init(jax.random.key(0), hp)
    masks = np.asarray(state["masks"], np.float64)
    assert masks.shape == (2, 8) and (masks >= 0).all() and (masks < 1).all()   # torch.rand logits
    s = 1 / (1 + np.exp(-masks))
    iou = (np.sum(s[0] * s[1]) + 1e-6) / (np.sum(s[0] + s[1] - s[0] * s[1]) + 1e-6)
    np.testing.assert_allclose(float(overlap_penalty(jnp.asarray(s, jnp.float32))), iou, rtol=1e-6)
    rng = np.random.default_rng(3)
    hard = (rng.random((2, 4, 8)) < 0.5).astype(np.float32)
    fn = jax.jit(lambda p, m, h: jax.value_and_grad(alg.masked_loss, argnums=1, has_aux=True)(p, m, hp, xs, ys, h))
    (loss, aux), mgrad = fn(state["params"], state["masks"], jnp.asarray(hard))
    z = np.asarray(jax.jit(alg.features)(state["params"], xs.reshape(8, 5))).reshape(2, 4, 8)
    classify = jax.jit(alg.classify)
    logits = np.asarray(classify(state["params"], jnp.asarray((z * hard).reshape(8, 8))), np.float64)
    y = np.asarray(ys).reshape(8)
    ce = -np_log_softmax(logits)[np.arange(8), y].mean()
    np.testing.assert_allclose(float(loss), ce + 0.1 * iou, rtol=1e-5)
    # straight-through: d/dm = (dCE/dgate at the hard gate) * s (1 - s), summed over the env's rows,
    # plus lambda * dIoU/dm
    dgate = jax.jit(jax.grad(lambda g: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(
        alg.classify(state["params"], (jnp.asarray(z) * g).reshape(8, 8))), jnp.asarray(y)[:, None], 1))))(
        jnp.asarray(hard))
    d_iou = jax.grad(lambda m: overlap_penalty(jax.nn.sigmoid(m)))(jnp.asarray(masks, jnp.float32))
    want = np.asarray(dgate).sum(1) * s * (1 - s) + 0.1 * np.asarray(d_iou)
    np.testing.assert_allclose(np.asarray(mgrad), want, rtol=1e-4, atol=1e-7)
    # the test rule: logits averaged over the envs' soft masks
    x = xs[0]
    zx = np.asarray(jax.jit(alg.features)(state["params"], x))
    want = np.mean([np.asarray(classify(state["params"], jnp.asarray(zx * s[e], jnp.float32))) for e in range(2)], 0)
    np.testing.assert_allclose(np.asarray(jax.jit(alg.predict)(state, x)), want, rtol=1e-5, atol=1e-6)
