"""Founding-paper DG algorithms (DSRM, QT-DoG, UDIM, CCFP) and ERM++'s recipe: each rule equals
a numpy statement of its reference code's formula on tiny generated inputs (references in the
modules' docstrings)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg import algorithms as A
from mixjax.dg.algorithms.ccfp import gram, ldp, style_distance
from mixjax.dg.algorithms.dsrm import dsrm_loss, min_entropy_logits
from mixjax.dg.algorithms.ermpp import sma_update
from mixjax.dg.algorithms.qtdog import lsq_init, lsq_quantize
from mixjax.dg.algorithms.udim import head_example_grads, inconsistency, normalize_batch_axis, sam_point
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

RNG = np.random.default_rng(0)
K, B = 2, 4
MLP_NET = NetSpec(input_shape=(3,), num_classes=3, featurizer="mlp", mlp_width=8)
CNN_NET = NetSpec(input_shape=(6, 6, 1), num_classes=2, featurizer="cnn", cnn_widths=(16, 16, 16, 16))


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_ce(logits, y):
    return -np_log_softmax(logits)[np.arange(len(y)), y].mean()


def build(name, net, **override):
    return build_algorithm(name, net, num_envs=K, batch_size=B, **override)


def batches(shape, classes):
    xs = RNG.normal(size=(K, B, *shape)).astype(np.float32)
    ys = RNG.integers(0, classes, (K, B)).astype(np.int32)
    return jnp.asarray(xs), jnp.asarray(ys)


# ---------------------------------------------------------------- DSRM
def test_dsrm_loss_and_min_entropy_head():
    z = RNG.normal(size=(K, B, 5)).astype(np.float32)
    ys = RNG.integers(0, 3, (K, B))
    heads = {"kernel": RNG.normal(size=(K, 5, 3)).astype(np.float32), "bias": RNG.normal(size=(K, 3)).astype(np.float32)}
    shared = RNG.normal(size=(K, B, 3)).astype(np.float32)
    expected = np.mean([(np_ce(z[e] @ heads["kernel"][e] + heads["bias"][e], ys[e]) + np_ce(shared[e], ys[e])) / 2
                        for e in range(K)])
    got = dsrm_loss(jnp.asarray(z), jnp.asarray(ys), jax.tree.map(jnp.asarray, heads), jnp.asarray(shared))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # head 1 is nearly one-hot on every row (lowest entropy) -> its logits are returned
    logits = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    logits[1] *= 20
    ent = [-(np.exp(np_log_softmax(lg)) * np_log_softmax(lg)).sum(-1).mean() for lg in logits]
    np.testing.assert_array_equal(min_entropy_logits(jnp.asarray(logits)), logits[int(np.argmin(ent))])


def test_dsrm_step_and_prediction():
    alg, hp = build("dsrm", MLP_NET)
    xs, ys = batches((3,), 3)
    state = alg.init(jax.random.key(0), hp)
    z = np.asarray(jax.jit(alg.features)(state["params"], xs.reshape(K * B, 3))).reshape(K, B, -1)
    shared = np.asarray(jax.jit(alg.logits)(state["params"], xs.reshape(K * B, 3))).reshape(K, B, -1)
    hk, hb = np.asarray(state["heads"]["kernel"]), np.asarray(state["heads"]["bias"])
    expected = np.mean([(np_ce(z[e] @ hk[e] + hb[e], np.asarray(ys[e])) + np_ce(shared[e], np.asarray(ys[e]))) / 2
                        for e in range(K)])
    new, metrics = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(0))
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert not np.allclose(new["heads"]["kernel"], hk)  # the env heads train with the same Adam
    x = xs[0]
    zz = np.asarray(jax.jit(alg.features)(new["params"], x))
    cands = [zz @ np.asarray(new["heads"]["kernel"][e]) + np.asarray(new["heads"]["bias"][e]) for e in range(K)]
    cands.append(np.asarray(jax.jit(alg.classify)(new["params"], jnp.asarray(zz))))
    ent = [-(np.exp(np_log_softmax(c)) * np_log_softmax(c)).sum(-1).mean() for c in cands]
    np.testing.assert_allclose(jax.jit(alg.predict)(new, x), cands[int(np.argmin(ent))], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- QT-DoG
def test_lsq_quantizer_forward_and_straight_through_gradients():
    w = RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)  # flax conv kernel, 4 output channels
    bits, pos, neg = 7, 63.0, -64.0
    s = np.abs(w).mean(axis=(0, 1, 2), keepdims=True) * 2 / np.sqrt(pos)
    np.testing.assert_allclose(lsq_init(jnp.asarray(w), bits), s, rtol=1e-6)
    s = s * 0.05  # small steps so that some weights clip
    v = w / s
    expected = np.round(np.clip(v, neg, pos)) * s
    q = lsq_quantize(jnp.asarray(w), jnp.asarray(s), bits)
    np.testing.assert_allclose(q, expected, rtol=1e-5, atol=1e-7)
    inside = (v > neg) & (v < pos)
    assert inside.any() and (~inside).any()
    c = RNG.normal(size=w.shape).astype(np.float32)
    gw, gs = jax.grad(lambda ww, ss: (jnp.asarray(c) * lsq_quantize(ww, ss, bits)).sum(), (0, 1))(jnp.asarray(w), jnp.asarray(s))
    # LSQ (Esser et al. 2020, Eq. 3): dQ/dw = 1 inside the range, 0 outside; dQ/ds = round(v) - v
    # inside, the clip level outside, times the gradient scale 1 / sqrt(thd_pos * numel(w))
    np.testing.assert_allclose(gw, c * inside, rtol=1e-6)
    dqds = np.where(inside, np.round(v) - v, np.clip(v, neg, pos))
    expected_gs = (c * dqds).sum(axis=(0, 1, 2), keepdims=True) / np.sqrt(pos * w.size)
    np.testing.assert_allclose(gs, expected_gs, rtol=1e-4, atol=1e-6)


def np_adam_zero_grad_step(p, mu, nu, count, lr, b1=0.9, b2=0.999, eps=1e-8):
    """torch Adam step (weight_decay 0) with a zero gradient, from moments mu, nu after ``count`` steps."""
    mu, nu, t = b1 * mu, b2 * nu, count + 1
    return p - lr * (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)


def first_kernel(alg, tree):
    f = alg.model.merge(tree).featurizer
    return np.asarray((f.convs[0] if alg.net.kind == "cnn" else f.layers[0]).kernel[...])


# the code's mode on the CNN (conv kernels); QAT on the MLP with qt_linear = 1 (linear kernels)
@pytest.mark.parametrize("paper,net,shape", [(0, CNN_NET, (6, 6, 1)), (1, MLP_NET, (3,))])
def test_qtdog_quantises_at_q_steps_and_optimiser_as_the_code(paper, net, shape):
    linear = int(net.kind == "mlp")
    alg, hp = build("qtdog", net, q_steps=2, qt_train_quantized=paper, qt_linear=linear)
    xs, ys = batches(shape, net.num_classes)
    update = jax.jit(alg.update)
    state = alg.init(jax.random.key(0), hp)
    for i in range(2):
        state, _ = update(hp, state, xs, ys, jax.random.key(i))
    assert not bool(state["quantized"])
    conv0 = lambda s: first_kernel(alg, s["params"])  # noqa: E731
    before = conv0(state)
    adam_state = state["opt"][1]  # scale_by_adam's state
    mu0, nu0 = first_kernel(alg, adam_state.mu), first_kernel(alg, adam_state.nu)
    s1, _ = update(hp, state, xs, ys, jax.random.key(2))  # step index 2 == q_steps: quantised from here
    assert bool(s1["quantized"])
    steps0 = first_kernel(alg, s1["steps"])
    if not paper:
        np.testing.assert_allclose(steps0, lsq_init(jnp.asarray(before), 7), rtol=1e-6)
    if paper:
        # QAT: straight-through gradients move the kernel; step sizes train; Adam was re-initialised
        assert int(s1["opt"][1].count) == 1
        assert not np.allclose(conv0(s1), np_adam_zero_grad_step(before, mu0, nu0, 2, float(hp["lr"])), atol=1e-7)
        assert not np.allclose(steps0, lsq_init(jnp.asarray(before), 7))
    else:
        # the code: the kernel only drifts by Adam's stale moments (zero gradient), s stays at its init
        np.testing.assert_allclose(conv0(s1), np_adam_zero_grad_step(before, mu0, nu0, 2, float(hp["lr"])),
                                   rtol=1e-5, atol=1e-8)
        assert int(s1["opt"][1].count) == 3
        s2, _ = update(hp, s1, xs, ys, jax.random.key(3))
        np.testing.assert_array_equal(first_kernel(alg, s2["steps"]), steps0)
    # prediction: every conv (and with qt_linear every linear) kernel -> round(clip(w / s, -64, 63)) * s
    np_q = lambda w, st: np.round(np.clip(w / st, -64, 63)) * st if w.ndim in (4, 2 * linear) else w  # noqa: E731
    expected = jax.tree.map(lambda w, st: jnp.asarray(np_q(np.asarray(w), np.asarray(st))), s1["params"], s1["steps"])
    np.testing.assert_allclose(jax.jit(alg.predict)(s1, xs[0]), jax.jit(alg.logits)(expected, xs[0]), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- UDIM
def test_udim_batch_axis_normalisation_like_torch_normalize_dim0():
    d = RNG.normal(size=(5, 3, 2)).astype(np.float32)
    d[:, 0, 0] = 0.0
    expected = d / np.maximum(np.linalg.norm(d, axis=0, keepdims=True), 1e-12)
    np.testing.assert_allclose(normalize_batch_axis(jnp.asarray(d)), expected, rtol=1e-6)


def np_inconsistency(z, zs, w, b, y):
    """IADA_FINAL._get_grads_var / _compute_distance_grads_var / _grads_norm_syn, float64."""
    def per_example(zz):
        lg = zz @ w + b
        r = np.exp(np_log_softmax(lg)) - np.eye(b.shape[0])[y]
        return np.einsum("nd,nc->ncd", zz, r).reshape(len(zz), -1), r  # torch layout [C, D]

    (gow, gob), (gsw, gsb) = per_example(z), per_example(zs)
    var_o, var_s, norm = [], [], 0.0
    for go, gs in ((gow, gsw), (gob, gsb)):
        mo = go.mean(0, keepdims=True)
        var_o.append(((go - mo) ** 2).mean(0))
        var_s.append(((gs - mo) ** 2).mean(0))
        norm += (gs**2).sum(1).mean() / go.shape[1]
    vo, vs = np.concatenate(var_o), np.concatenate(var_s)
    mean = (vo + vs) / 2
    return (((vo - mean) ** 2).mean() + ((vs - mean) ** 2).mean()) / 2 + norm


def test_udim_inconsistency_matches_reference_formula_and_autodiff_example_grads():
    z, zs = RNG.normal(size=(4, 5)), RNG.normal(size=(4, 5))
    w, b, y = RNG.normal(size=(5, 3)), RNG.normal(size=3), RNG.integers(0, 3, 4)
    got = inconsistency(*(jnp.asarray(a, jnp.float32) for a in (z, zs, w, b)), jnp.asarray(y))
    assert float(got) == pytest.approx(np_inconsistency(z, zs, w, b, y), rel=1e-4)
    ce = lambda ww, bb, zz, yy: -jax.nn.log_softmax(zz @ ww + bb)[yy]  # noqa: E731
    gw, gb = jax.vmap(jax.grad(ce, (0, 1)), (None, None, 0, 0))(jnp.asarray(w), jnp.asarray(b), jnp.asarray(z), jnp.asarray(y))
    hw, hb = head_example_grads(jnp.asarray(z), jnp.asarray(w), jnp.asarray(b), jnp.asarray(y))
    np.testing.assert_allclose(hw, gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hb, gb, rtol=1e-5, atol=1e-6)


def test_udim_input_perturbation_is_normalised_gradient_of_loss_plus_rho_grad_norm():
    alg, hp = build("udim", MLP_NET)
    params = alg.init(jax.random.key(1), hp)["params"]
    x = RNG.normal(size=(4, 3)).astype(np.float64)
    y = np.array([0, 2, 1, 2])
    rho, syn_lr = 0.05, 10.0
    net = alg.model.merge(params)
    layers = [(np.asarray(l.kernel[...], np.float64), np.asarray(l.bias[...], np.float64)) for l in net.featurizer.layers]
    head = (np.asarray(net.classifier.kernel[...], np.float64), np.asarray(net.classifier.bias[...], np.float64))

    def np_objective(xx):
        # CE(w; x) + rho ||grad_w CE(w; x)||, the gradient by backpropagation written out in numpy
        acts, h = [xx], xx
        for i, (wk, bk) in enumerate(layers):
            h = h @ wk + bk
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        logits = h @ head[0] + head[1]
        n = len(y)
        delta = (np.exp(np_log_softmax(logits)) - np.eye(3)[y]) / n
        sq = (acts[-1].T @ delta) ** 2
        total = sq.sum() + (delta.sum(0) ** 2).sum()
        delta = delta @ head[0].T
        for i in range(len(layers) - 1, -1, -1):
            total += ((acts[i].T @ delta) ** 2).sum() + (delta.sum(0) ** 2).sum()
            if i > 0:
                delta = (delta @ layers[i][0].T) * (acts[i] > 0)
        return np_ce(logits, y) + rho * np.sqrt(total)

    eps, grad = 1e-5, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (np_objective(x + e) - np_objective(x - e)) / (2 * eps)
    expected = x + syn_lr * grad / np.maximum(np.linalg.norm(grad, axis=0, keepdims=True), 1e-12)
    got = jax.jit(alg.perturbed_inputs)(params, jnp.asarray(x, jnp.float32), jnp.asarray(y), rho, syn_lr)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


def test_udim_sam_warmup_then_udim_gradient():
    alg, hp = build("udim", MLP_NET, udim_warmup_iters=1)
    xs, ys = batches((3,), 3)
    state = alg.init(jax.random.key(0), hp)
    params = state["params"]
    x, y = xs.reshape(K * B, 3), ys.reshape(-1)
    g = jax.jit(jax.grad(alg.ce))(params, x, y)
    gl = jax.tree.leaves(g)
    norm = np.sqrt(sum(float((a**2).sum()) for a in gl))
    for a, b, c in zip(jax.tree.leaves(sam_point(g, params, 0.05)), jax.tree.leaves(params), gl):
        np.testing.assert_allclose(a, np.asarray(b) + 0.05 * np.asarray(c) / norm, rtol=1e-5, atol=1e-7)
    s1, m1 = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(0))
    assert float(m1["inconsistency"]) == 0.0  # warm-up step: plain SAM
    @jax.jit
    def pieces(p):
        g_udim, _, inc = alg.udim_grads(hp, p, xs, ys)
        x_syn = alg.perturbed_inputs(p, x, y, hp["rho"], hp["syn_lr"])
        g_inc = jax.grad(alg.inconsistency_loss)(p, xs, x_syn.reshape(xs.shape), ys)
        return g_udim, inc, g_inc, alg.sam_grads(hp, p, xs, ys)[0]

    g_udim, inc, g_inc, g_sam = pieces(s1["params"])
    assert float(inc) > 0
    # after the warm-up: g = g_sam + worst_weight * grad(inconsistency at the perturbed inputs)
    for a, b, c in zip(jax.tree.leaves(g_udim), jax.tree.leaves(g_sam), jax.tree.leaves(g_inc)):
        np.testing.assert_allclose(a, np.asarray(b) + float(hp["worst_weight"]) * np.asarray(c), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- CCFP
def np_ldp(h, gamma, beta, eps=1e-6):
    mu = h.mean(axis=(1, 2), keepdims=True)
    sd = np.sqrt(h.var(axis=(1, 2), ddof=1, keepdims=True) + eps)  # torch's x.var: unbiased
    return (h - mu) / sd * (sd + gamma) + (mu + beta)


def np_gram(h):  # torch layout: y [b, c, h, w] -> F F^T / (c h w)
    y = h.transpose(0, 3, 1, 2)
    b, c, hh, ww = y.shape
    f = y.reshape(b, c, hh * ww)
    return f @ f.transpose(0, 2, 1) / (c * hh * ww)


def test_ccfp_ldp_gram_and_style_distance():
    h = RNG.normal(size=(3, 4, 5, 6)).astype(np.float32)
    gamma, beta = RNG.normal(size=6).astype(np.float32), RNG.normal(size=6).astype(np.float32)
    np.testing.assert_allclose(ldp(jnp.asarray(h), jnp.asarray(gamma), jnp.asarray(beta)), np_ldp(h, gamma, beta),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gram(jnp.asarray(h)), np_gram(h), rtol=1e-5, atol=1e-6)
    t = RNG.normal(size=h.shape).astype(np.float32)
    expected = np.linalg.norm(np_gram(h) - np_gram(t)) + np.linalg.norm(np_gram(h[:, :2]) - np_gram(t[:, :2]))
    got = style_distance([jnp.asarray(h), jnp.asarray(h[:, :2])], [jnp.asarray(t), jnp.asarray(t[:, :2])])
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_ccfp_step_student_teacher_and_adversarial_perturbation():
    alg, hp = build("ccfp", CNN_NET)
    xs, ys = batches((6, 6, 1), 2)
    x, y = xs.reshape(K * B, 6, 6, 1), ys.reshape(-1)
    state = alg.init(jax.random.key(0), hp)
    # at init the perturbation is the identity (gamma = beta = 0, up to the 1e-6 in sigma)
    plain = jax.jit(alg.logits)(state["teacher"]["net"], x)
    np.testing.assert_allclose(jax.jit(alg.predict)(state, x), plain, rtol=1e-3, atol=1e-4)
    logits_s, logits_t = np.asarray(jax.jit(alg.logits)(state["params"], x)), np.asarray(plain)
    new, m = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(0))
    assert float(m["loss"]) == pytest.approx(np_ce(logits_s, np.asarray(y)), rel=1e-5)
    assert float(m["loss_teacher"]) == pytest.approx(np_ce(logits_t, np.asarray(y)), rel=1e-4)
    # L_LD = -lambda_dis * style distance between the updated student and teacher
    @jax.jit
    def distance(student, teacher):
        return style_distance(alg.student_forward(student, x)[1], alg.teacher_forward(teacher, x)[1])

    ldp_t = jax.jit(_ldp_before_ld_step, static_argnums=0)(alg, hp, state, xs, ys)
    assert float(m["loss_ld"]) == pytest.approx(-float(distance(new["params"], {**new["teacher"], "ldp": ldp_t})), rel=1e-4)
    # Adam_t and Adam_LD both moved the perturbation (teacher optimiser includes gamma, beta)
    assert int(new["teacher_opt"][1].count) == 1 and int(new["ldp_opt"][1].count) == 1
    gam = np.asarray(new["teacher"]["ldp"][0][0])
    assert np.abs(gam).max() > 0


def _ldp_before_ld_step(alg, hp, state, xs, ys):
    """The perturbation after Adam_t's step only (recomputed independently of update's last part)."""
    from mixjax.dg.algorithms.base import apply_updates, cross_entropy
    k, b = xs.shape[:2]
    x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
    logits_s0 = jax.lax.stop_gradient(alg.logits(state["params"], x))

    def teacher_loss(t):
        logits = alg.teacher_forward(t, x)[0]
        return cross_entropy(logits, y) + hp["lambda_sem"] * ((logits_s0 - logits) ** 2).mean()

    g = jax.grad(teacher_loss)(state["teacher"])
    teacher, _ = apply_updates(alg.tx(hp), g, state["teacher_opt"], state["teacher"])
    return teacher["ldp"]


# ---------------------------------------------------------------- ERM++
def test_ermpp_sma_is_uniform_average_from_start_minus_two():
    start, ws = 4, [np.full(2, float(t + 1)) for t in range(8)]  # weights after update t
    sma, count = jnp.zeros(2), jnp.zeros(())
    for t, w in enumerate(ws):
        sma, count = sma_update(sma, jnp.asarray(w), count, start, t)
        expected = ws[t] if t + 1 < start else np.mean(ws[start - 2: t + 1], axis=0)
        np.testing.assert_allclose(sma, expected, rtol=1e-6)


def test_ermpp_linear_probe_then_full_training_and_sma_prediction():
    alg, hp = build("ermplusplus", MLP_NET, linear_steps=1, sma_start_iter=3)
    xs, ys = batches((3,), 3)
    state = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    feats = lambda s: jax.tree.leaves(alg.model.merge(s["params"]).featurizer)  # noqa: E731
    head = lambda s: np.asarray(alg.model.merge(s["params"]).classifier.kernel[...])  # noqa: E731
    history = [state]
    for i in range(4):
        history.append(update(hp, history[-1], xs, ys, jax.random.key(i))[0])
    # updates t = 0, 1 (<= linear_steps) train the head only, with its own Adam at linear_lr
    for t in (0, 1):
        for a, b in zip(feats(history[t]), feats(history[t + 1])):
            np.testing.assert_array_equal(a, b)
        assert not np.allclose(head(history[t]), head(history[t + 1]))
    assert not all(np.array_equal(a, b) for a, b in zip(feats(history[2]), feats(history[3])))
    assert int(history[4]["opt"][1].count) == 2  # the full Adam starts fresh at t = 2
    # prediction: the average of the weights after updates 1, 2, 3 (start - 2 = 1)
    avg = jax.tree.map(lambda *w: sum(w) / 3, *(h["params"] for h in history[2:5]))
    np.testing.assert_allclose(jax.jit(alg.predict)(history[4], xs[0]), jax.jit(alg.logits)(avg, xs[0]), rtol=1e-5, atol=1e-6)


def test_ccfp_on_an_mlp_featurizer_is_a_config_error():
    from mixjax.config import ConfigError
    from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig, validate

    cfg = SweepConfig(dataset=DatasetConfig(name="synthetic"), model=ModelConfig(featurizer="mlp"), algorithms=("erm", "ccfp"))
    with pytest.raises(ConfigError, match="ccfp"):
        validate(cfg)
    with pytest.raises(ValueError, match="ccfp"):
        A.get("ccfp")(net=MLP_NET, num_envs=K)
