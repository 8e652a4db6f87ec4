"""GAQAT and Meta-DMoE (mixjax.dg.algorithms.gaqat / metadmoe) against their rules restated in
numpy: GAQAT's SAM step with per-layer freezing of conflicting quantiser step sizes; Meta-DMoE's
aggregator, distillation step and test-time adaptation."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

NET = NetSpec(input_shape=(5,), num_classes=3, featurizer="mlp", mlp_width=8)


def build(name, **override):
    return build_algorithm(name, NET, num_envs=2, batch_size=4, **override)


def batches(seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32),
            jnp.asarray([[0, 1, 1, 2], [1, 0, 1, 1]], jnp.int32))


def leaves(t):
    return [np.asarray(v, np.float64) for v in jax.tree.leaves(t)]


def test_gaqat_step_freezes_the_layers_whose_scale_gradients_conflict():
    alg, hp = build("gaqat", mlp_width=8)
    assert (float(hp["qt_bits"]), float(hp["q_steps"]), float(hp["gaqat_momentum"])) == (4.0, 0.0, np.float32(0.9))
    xs, ys = batches(3)
    state = alg.init(jax.random.key(0), hp)
    params = state["params"]
    w = leaves(params)
    # LSQ init at q_steps (= 0): s = 2 mean|w| / sqrt(7) per output column, for every kernel
    s0 = [2 * np.abs(v).mean(0, keepdims=True) / np.sqrt(7.0) if v.ndim == 2 else np.ones(()) for v in w]
    treedef = jax.tree.structure(params)
    steps = jax.tree.unflatten(treedef, [jnp.asarray(v, jnp.float32) for v in s0])
    grad = jax.jit(jax.grad(alg.qloss, argnums=(0, 1)), static_argnums=())
    g_w, g_s = grad(params, steps, jnp.bool_(True), hp["qt_bits"], xs, ys)
    gw = leaves(g_w)
    norm = np.sqrt(sum((v ** 2).sum() for v in gw))
    eps = [0.05 * v / (norm + 1e-12) for v in gw]                        # SAM's perturbation
    pert = jax.tree.unflatten(treedef, [jnp.asarray(a + e, jnp.float32) for a, e in zip(w, eps)])
    h_w, h_s = grad(pert, steps, jnp.bool_(True), hp["qt_bits"], xs, ys)
    gs, hs = leaves(g_s), leaves(h_s)
    layer = [v.ndim == 2 for v in w]
    conflict = [np.mean(a * (b - a) < 0) if is_l else 0.0 for a, b, is_l in zip(gs, hs, layer)]
    disorder = [0.1 * c for c in conflict]                               # EMA from 0, m = 0.9
    ds = sorted(d for d, is_l in zip(disorder, layer) if is_l)
    assert ds[0] < ds[-1], ds                                            # both branches are exercised
    tau = (ds[0] + ds[-1]) / 2
    hp = {**hp, "gaqat_tau": jnp.float32(tau)}
    new, m = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(1))
    frozen = [is_l and d > tau for d, is_l in zip(disorder, layer)]
    # torch Adam's first step (weight decay 0): x - lr * g / (|g| + 1e-8), the weights along the SAM gradient
    adam = lambda x, g: x - 1e-3 * g / (np.abs(g) + 1e-8)  # noqa: E731
    for got, a, g in zip(leaves(new["params"]), w, leaves(h_w)):
        np.testing.assert_allclose(got, adam(a, g), rtol=1e-5, atol=1e-6)
    for got, s, g, f, is_l in zip(leaves(new["steps"]), s0, hs, frozen, layer):
        want = s if (f or not is_l) else adam(s, g)
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(leaves(new["disorder"]), disorder, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m["frozen_frac"]), np.mean([f for f, is_l in zip(frozen, layer) if is_l]))
    # the frozen layers' Adam moments did not move either
    mu = leaves(new["steps_opt"][1].mu)
    for v, f in zip(mu, frozen):
        if f:
            assert not v.any()
    # prediction runs the 4-bit network: at most 16 levels per output column
    q = np.asarray(jax.jit(alg.predict)(new, xs[0]))
    assert q.shape == (4, 3) and bool(new["quantized"])
    first = np.asarray(jax.tree.leaves(new["params"])[[i for i, v in enumerate(w) if v.ndim == 2][0]])
    from mixjax.dg.algorithms.qtdog import lsq_quantize
    s_first = jax.tree.leaves(new["steps"])[[i for i, v in enumerate(w) if v.ndim == 2][0]]
    qw = np.asarray(lsq_quantize(jnp.asarray(first), s_first, 4.0)) / np.asarray(s_first)
    np.testing.assert_allclose(qw, np.clip(np.round(first / np.asarray(s_first)), -8, 7), atol=1e-4)
