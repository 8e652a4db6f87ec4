"""GAQAT and Meta-DMoE (mixjax.dg.algorithms.gaqat / metadmoe) against their rules restated in
numpy: GAQAT's SAM step with per-layer freezing of conflicting quantiser step sizes; Meta-DMoE's
aggregator, distillation step and test-time adaptation."""

import jax
import jax.numpy as jnp
import numpy as np

from dg_fakes import TINY_NET, build_algorithm, build_tiny, tiny_batches


def leaves(t):
    return [np.asarray(v, np.float64) for v in jax.tree.leaves(t)]


def test_gaqat_step_freezes_the_layers_whose_scale_gradients_conflict():
    alg, hp = build_tiny("gaqat", mlp_width=8)
    assert (float(hp["qt_bits"]), float(hp["q_steps"]), float(hp["gaqat_momentum"])) == (4.0, 0.0, np.float32(0.9))
    xs, ys = tiny_batches(3)
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
    assert bool(new["quantized"])


def np_layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b


def np_aggregate(p, tok, heads):
    """fa_selector.get_feat: PreNorm attention + PreNorm feed-forward (exact GELU), mean over tokens."""
    from scipy.special import erf

    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    n, t, d = tok.shape
    c = d // heads
    h = np_layer_norm(tok, p["ln1_g"], p["ln1_b"]) @ p["w_qkv"] + p["b_qkv"]
    q, k, v = (h[..., i * d:(i + 1) * d].reshape(n, t, heads, c) for i in range(3))
    s = np.einsum("nthc,nshc->nhts", q, k) / np.sqrt(c)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x = tok + np.einsum("nhts,nshc->nthc", a, v).reshape(n, t, d) @ p["w_o"] + p["b_o"]
    u = np_layer_norm(x, p["ln2_g"], p["ln2_b"]) @ p["w1"] + p["b1"]
    x = x + (0.5 * u * (1 + erf(u / np.sqrt(2)))) @ p["w2"] + p["b2"]
    return x.mean(1)


def test_metadmoe_meta_step_expert_phase_and_test_time_adaptation():
    from mixjax.dg.algorithms.metadmoe import heads_for

    alg, hp = build_tiny("metadmoe", dmoe_expert_steps=1, dmoe_inner_lr=0.5)
    assert alg.support == 2 and heads_for(8) == 8 and heads_for(24) == 12
    xs, ys = tiny_batches(4)
    state = alg.init(jax.random.key(0), hp)
    rng = np.random.default_rng(5)
    state = {**state, "agg": {k: jnp.float32(np.asarray(a) + 0.1 * rng.normal(size=a.shape))
                              for k, a in state["agg"].items()}}   # non-trivial LayerNorm/bias parameters
    feats = jax.jit(jax.vmap(alg.features, in_axes=(0, None)))
    # expert phase (step 0 < 1): expert e steps on env e alone, by Adam's first step
    upd, logits = jax.jit(alg.update), jax.jit(alg.logits)
    s1, _ = upd(hp, state, xs, ys, jax.random.key(1))
    ce_grad = jax.jit(jax.grad(lambda p, x, y: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(alg.logits(p, x)),
                                                                         y[:, None], 1))))
    for e in range(2):
        pe = jax.tree.map(lambda a: np.asarray(a)[e], state["experts"])
        g = ce_grad(pe, xs[e], ys[e])
        for got, a, d in zip(leaves(jax.tree.map(lambda a: np.asarray(a)[e], s1["experts"])), leaves(pe), leaves(g)):
            np.testing.assert_allclose(got, a - 1e-3 * d / (np.abs(d) + 1e-8), rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(s1["agg"]), leaves(state["agg"])))
    # meta phase (step 1): episode e's teacher is the other expert; one inner SGD step on the
    # featuriser towards it on the support rows (first 2), CE of the adapted student on the query rows
    s2, m = upd(hp, s1, xs, ys, jax.random.key(2))
    params, experts = s1["params"], s1["experts"]

    @jax.jit
    def adapted(params, x_s, target):
        g = jax.grad(lambda p: jnp.mean((alg.features(p, x_s) - target) ** 2))(params)
        return jax.tree.map(lambda p, d: p - 0.5 * d, params, g)

    losses = []
    for e in range(2):
        tokens = np.asarray(feats(experts, xs[e, :2]))[1 - e][:, None, :]      # [s, K-1 = 1, D]
        t = np_aggregate(s1["agg"], tokens, 8)
        lg = np.asarray(logits(adapted(params, xs[e, :2], jnp.float32(t)), xs[e, 2:]), np.float64)
        losses.append(-np.log(np.exp(lg - lg.max(1, keepdims=True)) /
                              np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True))[[0, 1], ys[e, 2:]].mean())
    np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(s2["experts"]), leaves(experts)))   # frozen
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(s2["agg"]), leaves(s1["agg"])))  # learns via t
    # test time: adapt once on the first chunk's real rows (all experts as tokens), keep it for later chunks
    x = jnp.concatenate([xs[0], xs[1]])                                         # 8 rows, chunks of 4
    tt = alg.test_time_init(s2, {"env": 0, "is_test": True})
    step = jax.jit(alg.predict_with_state)
    valid = jnp.asarray([True, True, True, False])
    out0, tt = step(s2, tt, x[:4], valid)
    out1, tt = step(s2, tt, x[4:], jnp.ones(4, bool))
    f = np.asarray(feats(s2["experts"], x[:3])).transpose(1, 0, 2)              # [3, K, D]
    t = np_aggregate(s2["agg"], f, 8)
    want = adapted(s2["params"], x[:3], jnp.float32(t))
    np.testing.assert_allclose(np.asarray(out0)[:3], np.asarray(logits(want, x[:3])), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out1), np.asarray(logits(want, x[4:])), rtol=1e-4, atol=1e-5)
    assert float(tt["cost"]) == 3.0 and bool(tt["adapted"])
    assert not np.allclose(np.asarray(out1), np.asarray(logits(s2["params"], x[4:])), atol=1e-4)   # adaptation moved it


def test_metadmoe_refuses_a_single_training_environment():
    import pytest

    from mixjax.config import ConfigError

    alg, hp = build_algorithm("metadmoe", TINY_NET, num_envs=1, batch_size=4)
    with pytest.raises(ConfigError, match="'metadmoe' needs at least 2 training environments"):
        alg.init(jax.random.key(0), hp)
