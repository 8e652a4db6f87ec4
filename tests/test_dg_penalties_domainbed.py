"""Second-round DG algorithms: each rule equals a numpy statement of DomainBed's code
(facebookresearch/DomainBed ``domainbed/algorithms.py``, ``lib/misc.py``, commit b93c22a)
on tiny generated inputs."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from scipy.stats import norm

from mixjax.dg.algorithms.base import adam
from mixjax.dg.algorithms.cad import bottleneck_loss
from mixjax.dg.algorithms.causirl import causirl_penalty, masked_coral, masked_mmd
from mixjax.dg.algorithms.eqrm import kde_quantile
from mixjax.dg.algorithms.ib import ib_penalty
from mixjax.dg.algorithms.mldg import meta_pairs, mldg_grads
from mixjax.dg.algorithms.rsc import rsc_mask
from mixjax.dg.algorithms.selfreg import batch_norm, selfreg_loss, within_class_permutation

RNG = np.random.default_rng(0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(logits, y):
    return -np.log(softmax(logits)[np.arange(len(y)), y]).mean()


def np_coral(a, b):
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # unbiased, as torch's / (n - 1)
    return ((a.mean(0) - b.mean(0)) ** 2).mean() + ((ca - cb) ** 2).mean()


def np_mmd(a, b):
    def k(x, y):
        d = np.maximum(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1), 1e-30)
        return sum(np.exp(-g * d) for g in (1e-3, 1e-2, 1e-1, 1, 10, 100, 1000))

    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def test_ib_penalty_is_mean_unbiased_feature_variance():
    z = RNG.normal(size=(3, 5, 4)).astype(np.float32)
    expected = np.mean([np.var(z[e], axis=0, ddof=1).mean() for e in range(3)])
    np.testing.assert_allclose(ib_penalty(jnp.asarray(z)), expected, rtol=1e-5)


@pytest.mark.parametrize("dist,np_dist", [(masked_coral, np_coral), (masked_mmd, np_mmd)])
def test_causirl_penalty_on_random_cuts(dist, np_dist):
    z = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    cuts = np.array([2, 5, 0])
    first = np.concatenate([z[e, : cuts[e]] for e in range(3)])
    second = np.concatenate([z[e, cuts[e]:] for e in range(3)])
    got = causirl_penalty(jnp.asarray(z), jnp.asarray(cuts), dist)
    np.testing.assert_allclose(got, np_dist(first, second), rtol=2e-4, atol=1e-6)
    # |A| <= 1: DomainBed's penalty is 0, and the gradient stays finite
    one = jnp.asarray([1, 0, 0])
    assert float(causirl_penalty(jnp.asarray(z), one, dist)) == 0.0
    g = jax.grad(lambda zz: causirl_penalty(zz, one, dist))(jnp.asarray(z))
    assert np.isfinite(np.asarray(g)).all()


def np_kde_quantile(risks, alpha, n_steps=32):
    """Nonparametric(use_kde=True, 'Gauss-optimal').icdf(alpha), float64."""
    data = np.sort(risks.astype(np.float64))
    bw = 1.06 * np.std(data, ddof=1) * len(data) ** -0.2
    lo, hi = norm(data[0], bw).ppf(alpha), norm(data[-1], bw).ppf(alpha)
    cdf = lambda t: norm.cdf((t - data) / bw).mean()  # noqa: E731
    rng = [lo, hi]
    k = 0.5 * sum(rng)
    for _ in range(n_steps):
        rng[int(cdf(k) > alpha)] = k
        nk = 0.5 * sum(rng)
        if nk == k:
            break
        k = nk
    return k


def test_eqrm_kde_quantile_bisection():
    risks = np.array([0.4, 1.3, 0.7, 0.9], np.float32)
    for alpha in (0.5, 0.75, 0.95):
        got = float(kde_quantile(jnp.asarray(risks), alpha))
        assert got == pytest.approx(np_kde_quantile(risks, alpha), abs=1e-5)
        # the bisection found the KDE's alpha-quantile
        data = risks.astype(np.float64)
        bw = 1.06 * np.std(data, ddof=1) * 4 ** -0.2
        assert norm.cdf((got - data) / bw).mean() == pytest.approx(alpha, abs=1e-4)
    g = jax.grad(lambda r: kde_quantile(r, 0.75))(jnp.asarray(risks))
    assert np.isfinite(np.asarray(g)).all() and float(g.sum()) == pytest.approx(1.0, abs=1e-3)  # shift-equivariant


def test_rsc_masks_follow_percentiles():
    f = RNG.normal(size=(6, 5)).astype(np.float32)
    w = RNG.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0, 2])
    fd, bd = 0.3, 0.4
    mask = np.asarray(rsc_mask(lambda z: z @ jnp.asarray(w), jnp.asarray(f), jnp.asarray(y), 3, fd, bd))
    # numpy statement of DomainBed's RSC.update
    o = np.eye(3)[y]
    g = o @ w.T  # d(sum p*o)/df for a linear head
    mask_f = g < np.percentile(g, (1 - fd) * 100, axis=1)[:, None]
    s, s_m = softmax(f @ w), softmax((f * mask_f) @ w)
    changes = (s * o).sum(1) - (s_m * o).sum(1)
    mask_b = changes < np.percentile(changes, (1 - bd) * 100)
    np.testing.assert_array_equal(mask, np.logical_or(mask_f, mask_b[:, None]).astype(np.float32))


def np_bn_loss(z, y, d, T, conditional):
    """DomainBed AbstractCAD.bn_loss with is_flipped=True, no projection or normalisation."""
    n = len(y)
    mask_y = (y[:, None] == y[None, :]) & ~np.eye(n, dtype=bool)
    mask_d = d[:, None] == d[None, :]
    drop = (~np.eye(n, dtype=bool)).astype(float)
    logits = (z @ z.T) / T * drop
    logits = logits - logits.max(1, keepdims=True)
    with np.errstate(divide="ignore"):
        log = lambda m: np.log(m.astype(float))  # noqa: E731
        lse = lambda a: np.log(np.exp(a).sum(1))  # noqa: E731
        if not conditional:
            lp = logits - lse(logits + log(drop))[:, None]
            valid = mask_y.sum(1) > 0
            rows = -(T / 0.07) * lse(lp[valid] + log(~mask_d[valid]))
        else:
            m_ynd = mask_y & ~mask_d
            valid = m_ynd.sum(1) > 0
            lp = logits[valid] - lse(logits[valid] + log(mask_y[valid]))[:, None]
            rows = -(T / 0.07) * lse(lp + log(m_ynd[valid]))
    fin = np.isfinite(rows)
    return rows[fin].sum() / fin.sum() if fin.sum() else 0.0


@pytest.mark.parametrize("conditional", [False, True])
def test_cad_bottleneck_matches_domainbed(conditional):
    z = RNG.normal(size=(9, 4)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 2, 1, 0, 0, 2])
    d = np.repeat(np.arange(3), 3)
    got = bottleneck_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(d), 0.1, conditional)
    np.testing.assert_allclose(got, np_bn_loss(z.astype(np.float64), y, d, 0.1, conditional), rtol=1e-4)
    g = jax.grad(lambda zz: bottleneck_loss(zz, jnp.asarray(y), jnp.asarray(d), 0.1, conditional))(jnp.asarray(z))
    assert np.isfinite(np.asarray(g)).all()


def test_mldg_first_order_gradient_with_fresh_inner_adam():
    k, b, dim, c = 3, 4, 3, 2
    xs = RNG.normal(size=(k, b, dim)).astype(np.float32)
    ys = RNG.integers(0, c, (k, b)).astype(np.int32)
    w0 = RNG.normal(size=(dim, c)).astype(np.float32)
    perm = np.array([2, 0, 1])
    lr, wd, beta = 0.01, 1e-3, 0.7

    def np_grad(w, x, y):
        p = softmax(x @ w)
        p[np.arange(len(y)), y] -= 1
        return x.T @ p / len(y)

    def np_adam_first_step(w, g):  # torch Adam, fresh state, coupled L2
        g = g + wd * w
        m, v = 0.1 * g / 0.1, 0.001 * g**2 / 0.001  # bias-corrected first moments
        return w - lr * m / (np.sqrt(v) + 1e-8)

    expected, obj = np.zeros_like(w0), 0.0
    assert [tuple(map(int, t)) for t in zip(*meta_pairs(jnp.asarray(perm), 1))] == [(2, 1), (0, 1)]
    for i, j in [(2, 1), (0, 1)]:
        gi = np_grad(w0, xs[i], ys[i])
        inner = np_adam_first_step(w0, gi)
        gj = np_grad(inner, xs[j], ys[j])
        expected += (gi + beta * gj) / k
        obj += np_ce(xs[i] @ w0, ys[i]) + beta * np_ce(xs[j] @ inner, ys[j])
    loss_fn = lambda w, x, y: -jnp.take_along_axis(jax.nn.log_softmax(x @ w), y[:, None], 1).mean()  # noqa: E731
    got, got_obj = mldg_grads(loss_fn, jnp.asarray(w0), jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(perm), 1,
                              beta, adam(lr, wd))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert float(got_obj) == pytest.approx(obj / k, rel=1e-5)
    # two meta-test envs: pairs (perm[0], perm[1]) only; K <= m: no pairs
    assert [tuple(map(int, t)) for t in zip(*meta_pairs(jnp.asarray(perm), 2))] == [(2, 0)]
    assert meta_pairs(jnp.asarray(perm[:2]), 2)[0].shape == (0,)


def test_selfreg_within_class_shuffles_and_objective():
    y = jnp.asarray([1, 0, 1, 2, 0, 1, 2, 2])
    for seed in range(5):
        perm = np.asarray(within_class_permutation(jax.random.key(seed), y))
        assert sorted(perm) == list(range(8)) and np.all(np.asarray(y)[perm] == np.asarray(y))
    n, d, c = 8, 4, 3
    logits = RNG.normal(size=(n, c)).astype(np.float32)
    feat = RNG.normal(size=(n, d)).astype(np.float32)
    proj = RNG.normal(size=(n, d)).astype(np.float32)
    p2, p3 = np.array([2, 4, 5, 6, 1, 0, 7, 3]), np.array([5, 1, 0, 7, 4, 2, 3, 6])
    lam = 0.3
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    o3 = lam * logits[p2] + (1 - lam) * logits[p3]
    h3 = lam * proj[p2] + (1 - lam) * proj[p3]
    ce = np_ce(logits, np.asarray(y))
    expected = ce + min(ce, 1.0) * (lam * (mse(logits, logits[p2]) + 0.3 * mse(feat, proj[p2]))
                                    + (1 - lam) * (mse(logits, o3) + 0.3 * mse(feat, h3)))
    got, got_ce = selfreg_loss(jnp.asarray(logits), jnp.asarray(feat), jnp.asarray(proj), y, lam, p2, p3)
    assert float(got) == pytest.approx(expected, rel=1e-5) and float(got_ce) == pytest.approx(ce, rel=1e-5)
    x = RNG.normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_allclose(batch_norm(jnp.asarray(x)), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-5)


def test_ib_irm_and_eqrm_schedules():
    from mixjax.dg.algorithms.eqrm import EQRM
    from mixjax.dg.algorithms.ib import IBERM, IBIRM
    from mixjax.dg.networks import NetSpec

    net = NetSpec(input_shape=(4,), num_classes=2, featurizer="mlp", mlp_width=8)
    hp = {"ib_lambda": 50.0, "ib_penalty_anneal_iters": 3.0, "irm_lambda": 7.0, "irm_penalty_anneal_iters": 5.0}
    ib_irm, ib_erm = IBIRM(net=net, num_envs=2), IBERM(net=net, num_envs=2)
    assert [tuple(map(float, ib_irm.weights(hp, s))) for s in (2, 3, 5)] == [(1.0, 0.0), (1.0, 50.0), (7.0, 50.0)]
    assert float(ib_erm.weights(hp, 2)[1]) == 0.0 and float(ib_erm.weights(hp, 3)[1]) == 50.0
    eqrm = EQRM(net=net, num_envs=2)
    lr_of = lambda h, s: float(-eqrm.step_tx(h, jnp.int32(s)).update(  # noqa: E731
        {"w": jnp.ones(1)}, eqrm.step_tx(h, jnp.int32(s)).init({"w": jnp.ones(1)}), {"w": jnp.ones(1)})[0]["w"][0])
    h = {"lr": 1e-3, "weight_decay": 0.0, "eqrm_lr": 1e-6, "eqrm_burnin_iters": 4.0}
    assert lr_of(h, 3) == pytest.approx(1e-3, rel=1e-3) and lr_of(h, 4) == pytest.approx(1e-6, rel=1e-3)
    # a non-integer burn-in (DomainBed's random draws) never equals the step: no switch
    assert lr_of({**h, "eqrm_burnin_iters": 4.5}, 9) == pytest.approx(1e-3, rel=1e-3)


def test_sagnet_randomisation_and_separate_optimisers():
    from mixjax.dg.algorithms.sagnet import SagNet, randomize
    from mixjax.dg.networks import NetSpec

    z = RNG.normal(size=(5, 6)).astype(np.float32)
    alpha = RNG.uniform(size=(5, 1)).astype(np.float32)
    perm = np.array([3, 0, 4, 1, 2])
    mean, var = z.mean(-1, keepdims=True), z.var(-1, ddof=1, keepdims=True)
    zhat = (z - mean) / np.sqrt(var + 1e-5)
    m2, v2 = alpha * mean + (1 - alpha) * mean[perm], alpha * var + (1 - alpha) * var[perm]
    np.testing.assert_allclose(randomize(jnp.asarray(z), alpha, perm, "style"), zhat * np.sqrt(v2 + 1e-5) + m2,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(randomize(jnp.asarray(z), alpha, perm, "content"),
                               zhat[perm] * np.sqrt(var + 1e-5) + mean, rtol=1e-5, atol=1e-5)
    # content randomisation passes gradient only through the example's own mean and variance
    g = jax.grad(lambda zz: randomize(zz, alpha, perm, "content")[0].sum())(jnp.asarray(z))
    assert np.all(np.asarray(g)[1:] == 0)

    net = NetSpec(input_shape=(4,), num_classes=2, featurizer="mlp", mlp_width=8)
    alg = SagNet(net=net, num_envs=2)
    hp = {"lr": 1e-3, "weight_decay": 0.0, "sag_w_adv": 0.1}
    state = alg.init(jax.random.key(0), hp)
    xs = jnp.asarray(RNG.normal(size=(2, 4, 4)).astype(np.float32))
    ys = jnp.asarray(RNG.integers(0, 2, (2, 4)).astype(np.int32))
    new, metrics = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(1))
    counts = lambda opt: sorted({int(c) for c in jax.tree.leaves(opt) if jnp.ndim(c) == 0 and c.dtype == jnp.int32})  # noqa: E731
    assert counts(new["opt"]) == [2] and counts(new["opt_c"]) == [1] and counts(new["opt_s"]) == [1]
    changed = lambda a, b: [not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]  # noqa: E731
    assert all(changed(new["params"]["featurizer"], state["params"]["featurizer"]))
    assert all(changed(new["params"]["classifier"], state["params"]["classifier"]))
    assert all(changed(new["style"], state["style"])) and np.isfinite(float(metrics["loss_adv"]))


def test_ridg_rationale_bank_and_loss():
    from mixjax.dg.algorithms.ridg import rationales, ridg_loss_and_bank

    n, c, d, m = 6, 3, 4, 0.1
    f = RNG.normal(size=(n, d)).astype(np.float32)
    w = RNG.normal(size=(c, d)).astype(np.float32)
    y = np.array([0, 2, 0, 2, 2, 0])  # class 1 absent
    bank = RNG.normal(size=(c, c, d)).astype(np.float32)
    fresh = np.array([True, False, False])
    # numpy statement of liangchen527/RIDG's update loop
    rat = np.stack([w[i] * f for i in range(c)])  # [C(i), N, D]
    nb, loss = bank.copy(), 0.0
    for cls in np.unique(y):
        mean = rat[:, y == cls].mean(1)
        nb[cls] = mean if fresh[cls] else (1 - m) * nb[cls] + m * mean
        loss += ((rat[:, y == cls] - nb[cls][:, None]) ** 2).sum(2).mean()
    r = rationales(jnp.asarray(f), jnp.asarray(w))
    got, got_bank, got_fresh = ridg_loss_and_bank(r, jnp.asarray(y), jnp.asarray(bank), jnp.asarray(fresh), m)
    assert float(got) == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(got_bank, nb, rtol=1e-5, atol=1e-6)
    assert list(np.asarray(got_fresh)) == [False, False, False]
    np.testing.assert_array_equal(np.asarray(got_bank)[1], bank[1])  # an absent class keeps its bank


def test_sd_penalty_is_mean_squared_logit():
    from mixjax.dg.algorithms.sd import sd_penalty

    logits = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    assert float(sd_penalty(jnp.asarray(logits))) == pytest.approx((logits**2).mean(), rel=1e-6)


def test_iga_penalty_value_and_second_order_gradient():
    from mixjax.dg.algorithms.iga import iga_penalty

    k, b, dim, c = 3, 5, 3, 2
    xs = RNG.normal(size=(k, b, dim))
    ys = RNG.integers(0, c, (k, b))
    w0 = RNG.normal(size=(dim, c))

    def np_grad(w, x, y):
        p = softmax(x @ w)
        p[np.arange(len(y)), y] -= 1
        return x.T @ p / len(y)

    def np_penalty(w, gbar):
        return sum(((np_grad(w, xs[e], ys[e]) - gbar) ** 2).sum() for e in range(k))

    gbar0 = np.mean([np_grad(w0, xs[e], ys[e]) for e in range(k)], 0)
    risk = lambda w, x, y: -jnp.take_along_axis(jax.nn.log_softmax(x @ w), y[:, None], 1).mean()  # noqa: E731

    def penalty(w):
        grads = jax.vmap(jax.grad(risk), in_axes=(None, 0, 0))(w, jnp.asarray(xs, jnp.float32), jnp.asarray(ys))
        return iga_penalty(grads, grads.mean(0))

    w = jnp.asarray(w0, jnp.float32)
    assert float(penalty(w)) == pytest.approx(np_penalty(w0, gbar0), rel=1e-4)
    # d/dw by central differences with gbar held at its current value (DomainBed computes it
    # without a graph; since sum_e (g_e - gbar) = 0 this equals the gradient with gbar varying)
    eps, fd = 1e-5, np.zeros_like(w0)
    for idx in np.ndindex(*w0.shape):
        d = np.zeros_like(w0)
        d[idx] = eps
        fd[idx] = (np_penalty(w0 + d, gbar0) - np_penalty(w0 - d, gbar0)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(penalty)(w), fd, rtol=2e-3, atol=1e-5)


def test_sand_mask_soft_agreement():
    from mixjax.dg.algorithms.sandmask import sand_mask

    g = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    g[:, 0, 0] = [0.5, 0.5, 0.5]  # zero variance, full agreement: tanh(+inf) = 1
    tau, k = 0.4, 2.0
    # numpy statement of DomainBed's mask_grads for one tensor
    var = g.var(0, ddof=1)
    with np.errstate(divide="ignore"):
        mask = np.tanh(k * (1 / var) * (np.abs(np.sign(g).mean(0)) - tau))
    mask = np.maximum(mask, 0)
    mask[np.isnan(mask)] = 1e-17
    expected = mask * g.mean(0) / (1e-10 + mask.mean())
    got = sand_mask({"w": jnp.asarray(g)}, tau, k)["w"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert float(got[0, 0]) == pytest.approx(0.5 / (1e-10 + mask.mean()), rel=1e-5)
    # DomainBed's default tau = 1: tanh(k (a - 1) / v) <= 0 everywhere, so the mask is 0 and the
    # step is (numerically) zero - its hparams seed 0 does not train
    assert np.abs(np.asarray(sand_mask({"w": jnp.asarray(g)}, 1.0, 10.0)["w"])).max() < 1e-6


def test_rdm_penalties_match_domainbed():
    from mixjax.dg.algorithms.rdm import rdm_penalties

    nll = RNG.exponential(size=(3, 5)).astype(np.float32)
    worst = nll[np.argmax(nll.mean(1))]
    flat = nll.reshape(-1)

    def k(u, v):
        d = np.maximum((u[:, None] - v[None, :]) ** 2, 1e-30)
        return sum(np.exp(-g * d) for g in (1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100, 1000))

    mmd = k(worst, worst).mean() + k(flat, flat).mean() - 2 * k(worst, flat).mean()
    var = flat.var(ddof=1) + worst.var(ddof=1)
    got_mmd, got_var = rdm_penalties(jnp.asarray(nll))
    assert float(got_mmd) == pytest.approx(mmd, rel=1e-4, abs=1e-6)
    assert float(got_var) == pytest.approx(var, rel=1e-5)
