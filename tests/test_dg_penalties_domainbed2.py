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
    heads = jax.jit(fit_heads)({"w": f32(hw), "b": f32(hb)}, f32(z), jnp.asarray(ys))
    np.testing.assert_allclose(heads["w"], fw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(heads["b"], fb, rtol=1e-4, atol=1e-5)
    an = alpha / alpha.sum(1, keepdims=True)
    got, got_alpha = jax.jit(transfer_risk)(heads, f32(z), jnp.asarray(ys), f32(an), cos_lambda, eta)
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
    g = jax.jit(jax.grad(lambda zz: transfer_risk(heads, zz, jnp.asarray(ys), f32(an), cos_lambda, eta)[0]))(f32(z))
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


def test_mtl_embedding_buffer_and_objective():
    from mixjax.dg.algorithms.mtl import MTL, MTLMean

    k, b = 3, 4
    xs = jnp.asarray(RNG.normal(size=(k, b, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (k, b)), jnp.int32)
    hp = {"lr": 1e-3, "weight_decay": 0.0, "mtl_ema": 0.9}
    key = jax.random.key(3)
    for cls in (MTLMean, MTL):
        alg = cls(net=NET, num_envs=k)
        state = alg.init(jax.random.key(0), hp)
        buf = RNG.normal(size=(k, 8)).astype(np.float32)
        state = {**state, "embeddings": jnp.asarray(buf)}
        p = state["params"]
        z = np.asarray(alg.features(p, xs.reshape(k * b, 4, 4, 1))).reshape(k, b, -1)
        w = np.asarray(p["classifier"]["kernel"][...])
        bias = np.asarray(p["classifier"]["bias"][...])
        assert w.shape == (16, 2)  # [features, embedding] -> classes
        m = 0.9 * z.mean(1) + 0.1 * buf  # DomainBed update_embeddings_(features, env)
        if cls is MTL:  # ``.normal_()`` replaces the embedding by N(0, 1) noise
            second = [np.asarray(jax.random.normal(kk, (b, 8))) for kk in jax.random.split(key, k)]
        else:
            second = [np.repeat(m[e][None], b, 0) for e in range(k)]
        expected = sum(np_ce(np.concatenate([z[e], second[e]], 1) @ w + bias, np.asarray(ys[e])) for e in range(k))
        loss, aux = alg.loss(p, hp, state, xs, ys, key)
        assert float(loss) == pytest.approx(expected, rel=1e-5)
        np.testing.assert_allclose(aux["embeddings"], m, rtol=1e-5, atol=1e-6)
        new, _ = jax.jit(alg.update)(hp, state, xs, ys, key)
        np.testing.assert_allclose(new["embeddings"], m, rtol=1e-5, atol=1e-6)
    # prediction without an env: the batch mean (mtl_mean)
    x = xs[0]
    alg = MTLMean(net=NET, num_envs=k)
    zz = np.asarray(alg.features(p, x))
    want = np.concatenate([zz, np.repeat(zz.mean(0, keepdims=True), b, 0)], 1) @ w + bias
    np.testing.assert_allclose(alg.predict(state, x), want, rtol=1e-5, atol=1e-6)


def np_conv_same(x, w, b):
    """'same' 2-D convolution (cross-correlation, as torch's Conv2d), NHWC x HWIO."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, ww = x.shape[1:3]
    out = np.zeros((x.shape[0], h, ww, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + ww], w[i, j])
    return out + b


def np_context_net(params, stats, x, train):
    """DomainBed ContextNet (torch BatchNorm2d semantics, momentum 0.1, eps 1e-5)."""
    h, new = x, {}
    for i in range(2):
        h = np_conv_same(h, params[f"conv{i}"]["w"], params[f"conv{i}"]["b"])
        s = stats[f"bn{i}"]
        if train:
            n = h.shape[0] * h.shape[1] * h.shape[2]
            mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
            new[f"bn{i}"] = {"mean": 0.9 * s["mean"] + 0.1 * mean, "var": 0.9 * s["var"] + 0.1 * var * n / (n - 1)}
        else:
            mean, var = s["mean"], s["var"]
        h = (h - mean) / np.sqrt(var + 1e-5) * params[f"bn{i}"]["scale"] + params[f"bn{i}"]["bias"]
        h = np.maximum(h, 0)
    return np_conv_same(h, params["conv2"]["w"], params["conv2"]["b"]), new


def test_arm_context_network_and_groups():
    from mixjax.dg.algorithms.arm import ARM, context_net, init_context_net, with_context

    params, stats = init_context_net(jax.random.key(0), 1)
    np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    np_params["bn0"]["scale"] = RNG.uniform(0.5, 1.5, 64)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), np_params)
    stats = {f"bn{i}": {"mean": jnp.asarray(RNG.normal(size=64), jnp.float32),
                        "var": jnp.asarray(RNG.uniform(0.5, 2, 64), jnp.float32)} for i in range(2)}
    np_stats = jax.tree.map(lambda a: np.asarray(a, np.float64), stats)
    x = RNG.normal(size=(6, 4, 4, 1))
    for train in (True, False):
        want, want_stats = np_context_net(np_params, np_stats, x, train)
        got, got_stats = context_net(params, stats, jnp.asarray(x, jnp.float32), train)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
        if train:
            for i in range(2):
                for s in ("mean", "var"):
                    np.testing.assert_allclose(got_stats[f"bn{i}"][s], want_stats[f"bn{i}"][s], rtol=1e-4, atol=1e-5)
    # DomainBed ARM.predict: groups of support_size when it divides the batch, else one group
    ctx = RNG.normal(size=(6, 4, 4, 1))
    xx = jnp.asarray(x, jnp.float32)
    g3 = np.asarray(with_context(xx, jnp.asarray(ctx, jnp.float32), 3))
    np.testing.assert_allclose(g3[..., 1], np.repeat(ctx.reshape(2, 3, 4, 4).mean(1), 3, 0), rtol=1e-5, atol=1e-6)
    g4 = np.asarray(with_context(xx, jnp.asarray(ctx, jnp.float32), 4))
    np.testing.assert_allclose(g4[..., 1], np.repeat(ctx.mean(0)[None, ..., 0], 6, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g4[..., :1], x, rtol=1e-6)

    # one update: each env batch is its own context; the context net stays fixed, BN stats move
    alg = ARM(net=NET, num_envs=2, static=(("batch_size", 3),))
    hp = {"lr": 1e-3, "weight_decay": 0.0}
    state = alg.init(jax.random.key(1), hp)
    xs = jnp.asarray(RNG.normal(size=(2, 3, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (2, 3)), jnp.int32)
    c_all, _ = context_net(state["context"], state["bn"], xs.reshape(6, 4, 4, 1), True)
    inp = with_context(xs.reshape(6, 4, 4, 1), c_all, 3)
    want_loss = np_ce(np.asarray(alg.logits(state["params"], inp)), np.asarray(ys).reshape(-1))
    new, m = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(0))
    assert float(m["loss"]) == pytest.approx(want_loss, rel=1e-5)
    same = lambda a, b: all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(new["context"], state["context"]) and not same(new["bn"], state["bn"])
    assert not same(new["params"], state["params"])
    assert alg.predict(new, xs[0]).shape == (3, 2)


def np_proj(delta, adv, h):
    """DomainBed misc.proj over {name: array} dicts."""
    dist = np.sqrt(sum(np.linalg.norm(adv[k] - h[k]) ** 2 for k in h))
    if dist <= delta:
        return adv
    return {k: h[k] + delta / dist * (adv[k] - h[k]) for k in h}


def test_transfer_adversarial_head_ascent_and_projection():
    from mixjax.dg.algorithms.transfer import Transfer, project

    a = {"kernel": RNG.normal(size=(3, 2)), "bias": RNG.normal(size=2)}
    c = {"kernel": RNG.normal(size=(3, 2)), "bias": RNG.normal(size=2)}
    for delta in (0.5, 100.0):
        got = project(jax.tree.map(jnp.asarray, a), jax.tree.map(jnp.asarray, c), delta)
        want = np_proj(delta, a, c)
        for key in a:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)  # float32 vs float64

    k, b = 3, 5
    xs = jnp.asarray(RNG.normal(size=(k, b, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (k, b)), jnp.int32)
    alg = Transfer(net=NET, num_envs=k)
    hp = {"lr": 1e-2, "weight_decay": 0.0, "t_lambda": 2.0, "delta": 0.05, "d_steps_per_g": 3.0,
          "weight_decay_d": 0.0, "gda": 1.0, "beta1": 0.5, "lr_d": 0.5}
    state = alg.init(jax.random.key(0), hp)
    state = {**state, "adv": jax.tree.map(lambda v: v + 0.3, state["adv"])}  # a stale adversarial head
    new, m = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(0))
    same = lambda u, v: all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v)))  # noqa: E731
    assert same(new["params"], state["params"])  # gda: DomainBed's optimiser holds only the adversarial head

    # numpy statement of the adversarial loop: start from w, ascend t_lambda * (max - min env CE), project
    z = np.asarray(alg.features(state["params"], xs.reshape(k * b, 4, 4, 1)), np.float64).reshape(k, b, -1)
    w = {n: np.asarray(v[...], np.float64) for n, v in state["params"]["classifier"].items()}
    adv = dict(w)
    for _ in range(3):
        risks = [np_ce(z[e] @ adv["kernel"] + adv["bias"], np.asarray(ys[e])) for e in range(k)]
        hi, lo = int(np.argmax(risks)), int(np.argmin(risks))
        gh, gl = np_head_grads(adv["kernel"], adv["bias"], z[hi], np.asarray(ys[hi])), \
            np_head_grads(adv["kernel"], adv["bias"], z[lo], np.asarray(ys[lo]))
        gap = 2.0 * (risks[hi] - risks[lo])
        adv = {"kernel": adv["kernel"] + 0.5 * 2.0 * (gh[0] - gl[0]), "bias": adv["bias"] + 0.5 * 2.0 * (gh[1] - gl[1])}
        adv = np_proj(0.05, adv, w)
    for n in adv:
        np.testing.assert_allclose(new["adv"][n][...], adv[n], rtol=1e-4, atol=1e-6)
    assert float(m["gap"]) == pytest.approx(gap, rel=1e-4)

    # gda False: phi steps twice (CE, then the gap), w once (the gap gives it no gradient)
    new, _ = jax.jit(alg.update)({**hp, "gda": 0.0}, state, xs, ys, jax.random.key(0))
    counts = lambda opt: sorted({int(c) for c in jax.tree.leaves(opt) if jnp.ndim(c) == 0 and c.dtype == jnp.int32})  # noqa: E731
    assert counts(new["opt"]) == [2] and counts(new["opt_c"]) == [1]
    assert not same(new["params"]["featurizer"], state["params"]["featurizer"])
    assert not same(new["params"]["classifier"], state["params"]["classifier"])


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_disc(layers, z):
    for layer in layers[:-1]:
        z = z @ layer["w"] + layer["b"]
        z = np.where(z > 0, z, 0.01 * z)  # LeakyReLU
    return (z @ layers[-1]["w"] + layers[-1]["b"])[:, 0]


def np_bce(s, t):  # torch BCEWithLogitsLoss, mean
    return (np_softplus(s) - s * t).mean()


@pytest.mark.parametrize("output,smoothing", [("tanh", 0.0), ("relu", 0.2)])
def test_urm_generator_and_discriminator_losses(output, smoothing):
    from mixjax.dg import hparams as H
    from mixjax.dg.algorithms.urm import URM

    k, b = 2, 6
    xs = jnp.asarray(RNG.normal(size=(k, b, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (k, b)), jnp.int32)
    hp = H.draw(URM.hparam_space(True), 0, 0)
    hp.update(urm_generator_output=output, urm_discriminator_label_smoothing=smoothing, urm_adv_lambda=0.15,
              urm_discriminator_hidden_layers=2)
    static, traced = H.split_static(hp)
    assert dict(static)["urm_generator_output"] == ("tanh", "relu", "sigmoid").index(output)
    alg = URM(net=NET, num_envs=k, static=static)
    hp = {n: jnp.float32(v) for n, v in traced.items()}
    state = alg.init(jax.random.key(0), hp)
    key = jax.random.key(5)
    new, m = jax.jit(alg.update)(hp, state, xs, ys, key)

    act, lo, hi = {"tanh": (np.tanh, -1, 1), "relu": (lambda v: np.maximum(v, 0), 0, 1)}[output]
    raw = np.asarray(super(URM, alg).features(state["params"], xs.reshape(k * b, 4, 4, 1)), np.float64)
    z = act(raw)
    cls = state["params"]["classifier"]
    w, bias = np.asarray(cls["kernel"][...]), np.asarray(cls["bias"][...])
    disc = jax.tree.map(lambda a: np.asarray(a, np.float64), state["disc"])
    assert len(disc) == 4  # input, 2 hidden, output
    gen = np_ce(z @ w + bias, np.asarray(ys).reshape(-1)) + 0.15 * np_bce(np_disc(disc, z), 1.0)
    assert float(m["loss"]) == pytest.approx(gen, rel=1e-5)
    # discriminator: noise U[lo, hi) is "real", the (pre-step) features "fake"
    kn, kt, kf = jax.random.split(key, 3)
    noise = (hi - lo) * np.asarray(jax.random.uniform(kn, z.shape)) + lo
    t1 = 1 - smoothing + smoothing * np.asarray(jax.random.uniform(kt, (k * b,)))
    t0 = smoothing * np.asarray(jax.random.uniform(kf, (k * b,)))
    assert noise.min() >= lo and noise.max() < hi and t1.min() >= 1 - smoothing and t0.max() <= smoothing
    d_loss = np_bce(np_disc(disc, noise), t1) + 0.15 * np_bce(np_disc(disc, z), t0)
    assert float(m["disc_loss"]) == pytest.approx(d_loss, rel=1e-5)
    # prediction goes through the output activation
    np.testing.assert_allclose(alg.predict(state, xs.reshape(k * b, 4, 4, 1)), z @ w + bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="urm_generator_output='identity'"):
        H.split_static({"urm_generator_output": "identity"})


def np_supcon_lambda(features, labels, domain_labels, lamda=0.5, temperature=0.07):
    """DomainBed misc.SupConLossLambda.forward transcribed (loop over anchors)."""
    n = features.shape[0]
    nf = features / np.linalg.norm(features, axis=1, keepdims=True)
    dots = nf @ nf.T / temperature
    loss, nans = 0.0, 0
    for i, (label, dom) in enumerate(zip(labels, domain_labels)):
        pos_in = (labels == label) & (domain_labels == dom)
        pos_in[i] = False
        pos_out = (labels == label) & (domain_labels != dom)
        neg_in = (labels != label) & (domain_labels == dom)
        neg_out = (labels != label) & (domain_labels != dom)
        scaled = np.concatenate([lamda * np.exp(dots[pos_in][:, i]), (1 - lamda) * np.exp(dots[pos_out][:, i])])
        denom = np.sum(np.concatenate([lamda * np.exp(dots[neg_in][:, i]), (1 - lamda) * np.exp(dots[neg_out][:, i]),
                                       scaled])) + 1e-5
        num_pos = pos_in.sum() + pos_out.sum()
        with np.errstate(invalid="ignore"):
            loss_i = np.sum(np.log(scaled / denom + 1e-5)) / num_pos
        if np.isnan(loss_i):
            nans += 1
            continue
        loss -= loss_i
    return loss / (n - nans + 1)


def test_adrmx_supcon_remix_and_alternation():
    from mixjax.dg.algorithms.adrmx import ADRMX, remix_pairs, supcon_lambda

    z = RNG.normal(size=(9, 5))
    y = np.array([0, 1, 1, 0, 2, 1, 0, 0, 3])  # class 2 and 3 have one member: no positives
    d = np.repeat(np.arange(3), 3)
    got = supcon_lambda(jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(d))
    assert float(got) == pytest.approx(np_supcon_lambda(z, y, d), rel=1e-4)

    yy = jnp.asarray([0, 1, 1, 0, 2, 1, 0, 0])
    for s in range(20):
        i, j, valid = map(np.asarray, remix_pairs(jax.random.key(s), yy, 4))
        counts = np.bincount(np.asarray(yy), minlength=4)
        assert list(valid) == [True, True, False, False]
        assert np.all((i != j)[valid]) and np.all(i[valid] < counts[valid]) and np.all(j[valid] < counts[valid])

    k, b = 3, 4
    alg = ADRMX(net=NET, num_envs=k, static=(("batch_size", b), ("mlp_depth", 3), ("mlp_width", 8)))
    hp = {n: jnp.float32(v.default) for n, v in ADRMX.hparam_space(True).items()
          if n not in ("batch_size", "mlp_depth", "mlp_width")}
    state = alg.init(jax.random.key(0), hp)
    xs = jnp.asarray(RNG.normal(size=(k, b, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray(RNG.integers(0, 2, (k, b)), jnp.int32)
    x, e = xs.reshape(k * b, 4, 4, 1), np.repeat(np.arange(k), b)
    # the generator loss: a numpy sum of its terms (remix term recomputed from the same pairs)
    net = alg.model.merge(state["params"])
    zl, zd = np.asarray(net.featurizer_label(x), np.float64), np.asarray(net.featurizer_domain(x), np.float64)
    zc, yv = zl - zd, np.asarray(ys).reshape(-1)
    key = jax.random.key(9)
    i, j, valid = map(np.asarray, remix_pairs(key, jnp.asarray(yv), 2))
    head = lambda m, v: np.asarray(m(jnp.asarray(v, jnp.float32)), np.float64)  # noqa: E731
    remix = sum(np_ce(head(net.classifier_label_1, (zc[i[c]] + zd[j[c]])[None]), yv[i[c]:i[c] + 1])
                for c in range(2) if valid[c]) / 2
    disc = np_ce(head(alg.disc_module.merge(state["disc"]), zc), e)
    want = (np_ce(head(net.classifier_label_1, zl), yv) + np_ce(head(net.classifier_label_2, zc), yv)
            + np_ce(head(net.classifier_domain, zd), e) + remix
            + np_supcon_lambda(zl, yv, e) + np_supcon_lambda(zc, yv, e) - 0.75 * disc)
    total, m = jax.jit(alg.losses)(state["params"], state["disc"], hp, x, jnp.asarray(yv), jnp.asarray(e), key)
    assert float(total) == pytest.approx(want, rel=1e-4)
    # update_count 1, 2: discriminator, generator (d_steps_per_g_step = 2: t mod 3 < 2)
    upd = jax.jit(alg.update)
    same = lambda u, v: all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v)))  # noqa: E731
    s1, _ = upd(hp, state, xs, ys, jax.random.key(1))
    assert same(s1["params"], state["params"]) and not same(s1["disc"], state["disc"])
    s2, _ = upd(hp, s1, xs, ys, jax.random.key(2))
    assert not same(s2["params"], s1["params"]) and same(s2["disc"], s1["disc"])
    assert alg.predict(s2, xs[0]).shape == (b, 2)


def test_arm_is_evaluated_in_batches_of_one_env():
    """DomainBed evaluates each env in batches of 64; ARM's predictions depend on the batch, so the
    sweep evaluates it per env in chunks of 64 (the last wrapping to the env's first images) and
    never mixes in another env's images or the zero rows that pad envs to one length."""
    import dataclasses

    from mixjax.dg.algorithms.arm import ARM
    from mixjax.dg.sweep import GroupRunner

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class BatchProbe(ARM):
        """Predicts class 1 only for a batch of 64 images of one env and no padding."""

        def predict(self, state, x):
            ok = (x.shape[0] == 64) & (x.min() > 0.5) & (x.max() - x.min() < 1.5)
            return jnp.stack([jnp.zeros(x.shape[0]), jnp.where(ok, 1.0, -1.0) * jnp.ones(x.shape[0])], -1)

    alg = BatchProbe(net=NET, num_envs=2, static=(("batch_size", 8),))
    sizes, n = (64, 100), 100
    X = np.zeros((2, n, 4, 4, 1), np.float32)
    for e, s in enumerate(sizes):
        X[e, :s] = RNG.uniform(1 + 2 * e, 2 + 2 * e, size=(s, 4, 4, 1))  # env e in [1 + 2e, 2 + 2e]
    in_mask, out_mask = np.zeros((2, n), bool), np.zeros((2, n), bool)
    for e, s in enumerate(sizes):
        in_mask[e, : s // 2], out_mask[e, s // 2 : s] = True, True
    jd = {"in_mask": jnp.asarray(in_mask), "out_mask": jnp.asarray(out_mask)}
    Y = jnp.ones((2, n), jnp.int32)
    acc_in, acc_out = GroupRunner(alg, 8, 1024, False).evaluate({}, jd, jnp.asarray(X), Y, 1)
    assert list(map(float, acc_in)) == [1.0, 1.0] and list(map(float, acc_out)) == [1.0, 1.0]
    # the same probe without ``eval_context`` sees mixed, padded chunks
    class PlainProbe(BatchProbe):
        eval_context = None

    acc_in, _ = GroupRunner(PlainProbe(net=NET, num_envs=2, static=(("batch_size", 8),)), 8, 1024, False).evaluate(
        {}, jd, jnp.asarray(X), Y, 1)
    assert float(acc_in.max()) == 0.0


@pytest.mark.skipif(not __import__("os").environ.get("MIXJAX_DOMAINBED_DIR"),
                    reason="set MIXJAX_DOMAINBED_DIR to a facebookresearch/DomainBed checkout")
def test_hparam_draws_equal_domainbed_registry():
    """Defaults and random draws of these algorithms equal DomainBed's ``hparams_registry`` (read
    from the checkout; its ``misc`` import is replaced by ``seed_hash``, so torch is not needed)."""
    import os
    import pathlib
    import types

    from mixjax.dg import algorithms as A
    from mixjax.dg import hparams as H

    src = (pathlib.Path(os.environ["MIXJAX_DOMAINBED_DIR"]) / "domainbed" / "hparams_registry.py").read_text()
    registry = {"misc": types.SimpleNamespace(seed_hash=H.seed_hash)}
    exec(compile(src.replace("from domainbed.lib import misc", ""), "hparams_registry.py", "exec"), registry)
    names = {"trm": "TRM", "mtl": "MTL", "mtl_mean": "MTL", "arm": "ARM", "transfer": "Transfer", "urm": "URM",
             "adrmx": "ADRMX"}
    for ours, theirs in names.items():
        for dataset, small in (("ColoredMNIST", True), ("PACS", False)):
            space = A.get(ours).hparam_space(small)
            for h in range(4):
                for t in range(2):
                    ref = (registry["default_hparams"](theirs, dataset) if h == 0
                           else registry["random_hparams"](theirs, dataset, H.seed_hash(h, t)))
                    mine = H.draw(space, h, t)
                    assert {k: ref[k] for k in mine} == mine, (ours, dataset, h, t)
                    assert set(mine) >= set(ref) - set(H.draw(A.get("erm").hparam_space(small), h, t)) - {
                        "data_augmentation", "resnet18", "resnet50_augmix", "dinov2", "vit", "vit_attn_tune",
                        "freeze_bn", "lars", "linear_steps", "resnet_dropout", "vit_dropout", "class_balanced",
                        "nonlinear_classifier"}, (ours, dataset)
