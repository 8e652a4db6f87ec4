"""Each DG penalty / update rule equals a hand computation on a fixed batch."""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from mixjax.dg.algorithms.andmask import and_mask
from mixjax.dg.algorithms.base import adam
from mixjax.dg.algorithms.coral import coral_distance, pairwise_penalty
from mixjax.dg.algorithms.dann import class_balance_weights, discriminator_loss
from mixjax.dg.algorithms.fishr import fishr_penalty, grad_variance, per_sample_head_grads
from mixjax.dg.algorithms.groupdro import groupdro_weights
from mixjax.dg.algorithms.irm import irm_penalty
from mixjax.dg.algorithms.mixup import mixup_loss
from mixjax.dg.algorithms.mmd import GAMMAS, mmd_distance
from mixjax.dg.algorithms.sam import sam_perturbation
from mixjax.dg.algorithms.vrex import vrex_penalty
from mixjax.methods.fish import fish_step

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 3)).astype(np.float32)
Y = np.array([0, 2, 1, 1, 0, 2], np.int32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(logits, y):
    return -np.log(softmax(logits)[np.arange(len(y)), y]).mean()


def test_irm_penalty_is_product_of_half_batch_scale_gradients():
    # d/ds CE(s * l, y) at s = 1 is mean_i (sum_c p_ic l_ic - l_iy)
    def dscale(lg, y):
        return np.mean((softmax(lg) * lg).sum(-1) - lg[np.arange(len(y)), y])

    expected = dscale(LOGITS[0::2], Y[0::2]) * dscale(LOGITS[1::2], Y[1::2])
    np.testing.assert_allclose(irm_penalty(jnp.asarray(LOGITS), jnp.asarray(Y)), expected, rtol=1e-5)


def test_vrex_penalty_is_biased_variance_of_env_risks():
    losses = np.array([0.3, 0.9, 0.6], np.float32)
    assert float(vrex_penalty(jnp.asarray(losses))) == pytest.approx(np.var(losses), rel=1e-6)


def test_groupdro_exponentiated_update():
    q = np.array([1.0, 1.0, 1.0], np.float32)
    losses = np.array([0.5, 1.0, 2.0], np.float32)
    w = np.exp(0.1 * losses) / np.exp(0.1 * losses).sum()
    np.testing.assert_allclose(groupdro_weights(jnp.asarray(q), jnp.asarray(losses), 0.1), w, rtol=1e-6)
    # the weights never carry gradient to the losses (DomainBed uses .data)
    g = jax.grad(lambda l: groupdro_weights(jnp.asarray(q), l, 0.1)[0])(jnp.asarray(losses))
    assert np.all(np.asarray(g) == 0)


def test_coral_distance_means_and_unbiased_covariances():
    a, b = RNG.normal(size=(7, 4)), RNG.normal(size=(5, 4)) + 0.5
    expected = np.mean((a.mean(0) - b.mean(0)) ** 2) + np.mean((np.cov(a.T, ddof=1) - np.cov(b.T, ddof=1)) ** 2)
    assert float(coral_distance(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))) == pytest.approx(expected, rel=1e-4)


def test_pairwise_penalty_averages_over_env_pairs():
    feats = jnp.asarray(RNG.normal(size=(3, 5, 2)), jnp.float32)
    d = lambda u, v: jnp.sum(u) - jnp.sum(v)  # noqa: E731
    expected = (d(feats[0], feats[1]) + d(feats[0], feats[2]) + d(feats[1], feats[2])) / 3
    assert float(pairwise_penalty(feats, d)) == pytest.approx(float(expected), rel=1e-5)


def test_mmd_distance_seven_bandwidth_gaussian_kernel():
    a, b = RNG.normal(size=(4, 3)) * 0.3, RNG.normal(size=(3, 3)) * 0.3 + 0.2

    def k(x, y):
        d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        d = np.maximum(d, 1e-30)
        return sum(np.exp(-g * d) for g in GAMMAS).mean()

    expected = k(a, a) + k(b, b) - 2 * k(a, b)
    assert float(mmd_distance(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))) == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_mixup_loss_cyclic_pairs():
    xs = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    ys = np.array([[0, 1], [1, 2], [2, 0]], np.int32)
    w = RNG.normal(size=(4, 3)).astype(np.float32)
    perm, lam = np.array([2, 0, 1]), np.array([0.3, 0.8, 0.5], np.float32)
    total = 0.0
    for p in range(3):
        i, j = perm[p], perm[(p + 1) % 3]
        x = lam[p] * xs[i] + (1 - lam[p]) * xs[j]
        total += lam[p] * np_ce(x @ w, ys[i]) + (1 - lam[p]) * np_ce(x @ w, ys[j])
    got = mixup_loss(lambda x: x @ jnp.asarray(w), jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(perm), jnp.asarray(lam))
    assert float(got) == pytest.approx(total / 3, rel=1e-5)


def test_sam_perturbation_has_norm_rho_along_gradient():
    g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    eps = sam_perturbation(g, 0.05)
    np.testing.assert_allclose(eps["a"], [0.03, 0.0], rtol=1e-6)
    np.testing.assert_allclose(eps["b"], [[0.04]], rtol=1e-6)


def test_and_mask_keeps_only_sign_consistent_coordinates():
    # 3 envs x 4 coordinates: coords 0 and 3 agree in sign across envs, 1 and 2 do not
    g = jnp.array([[1.0, 1.0, -2.0, -1.0], [2.0, -1.0, 1.0, -3.0], [3.0, 1.0, 1.0, -2.0]])
    out = and_mask({"w": g}, 1.0)["w"]
    mean = np.asarray(g).mean(0)
    expected = np.array([mean[0], 0.0, 0.0, mean[3]]) / (0.5 + 1e-10)  # mask mean = 2/4
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # tau = 1/3 keeps every coordinate (|mean sign| >= 1/3 everywhere)
    np.testing.assert_allclose(and_mask({"w": g}, 1.0 / 3)["w"], mean, rtol=1e-6)


def test_fish_meta_step_domainbed_form():
    # loss 0.5 ||p - b_e||^2 with inner SGD(lr=1): the clone jumps to b_1 then b_2 (env order);
    # DomainBed's meta step: p + meta_lr * (b_2 - p), no division by the number of envs
    loss = lambda p, b: 0.5 * jnp.sum((p["w"] - b) ** 2)  # noqa: E731
    p = {"w": jnp.array([1.0, 2.0])}
    envs = jnp.array([[5.0, 5.0], [3.0, -2.0]])
    tx = optax.sgd(1.0)
    new, _, losses = fish_step(loss, p, tx.init(p), tx, envs, meta_lr=0.5, divide_by_meta_steps=False)
    np.testing.assert_allclose(new["w"], [2.0, 0.0])
    np.testing.assert_allclose(losses, [0.5 * (16 + 9), 0.5 * (4 + 49)])


def test_fishr_per_sample_grads_match_autodiff_and_penalty():
    z = jnp.asarray(RNG.normal(size=(6, 4)), jnp.float32)
    w, b = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32), jnp.asarray(RNG.normal(size=(3,)), jnp.float32)
    y = jnp.asarray(Y)

    def ce(params, zi, yi):
        lg = zi @ params["kernel"] + params["bias"]
        return -jax.nn.log_softmax(lg)[yi]

    auto = jax.vmap(jax.grad(ce), in_axes=(None, 0, 0))({"kernel": w, "bias": b}, z, y)
    auto_flat = jnp.concatenate([auto["kernel"].reshape(6, -1), auto["bias"]], axis=1)
    np.testing.assert_allclose(per_sample_head_grads(z, z @ w + b, y), auto_flat, rtol=1e-5, atol=1e-6)
    g = np.asarray(auto_flat)
    np.testing.assert_allclose(grad_variance(jnp.asarray(g)), g.var(0), rtol=1e-5, atol=1e-7)
    v = RNG.random((3, 5)).astype(np.float32)
    expected = np.mean([np.mean((v[e] - v.mean(0)) ** 2) for e in range(3)])
    assert float(fishr_penalty(jnp.asarray(v))) == pytest.approx(expected, rel=1e-5)


def test_dann_discriminator_loss_with_gradient_penalty_linear_disc():
    z = RNG.normal(size=(6, 3)).astype(np.float32)
    w = RNG.normal(size=(3, 2)).astype(np.float32)
    d = np.array([0, 0, 0, 1, 1, 1], np.int32)
    p = softmax(z @ w)
    delta = p - np.eye(2)[d]
    input_grad = delta @ w.T  # d/dz_i of sum_j CE_j for a linear discriminator
    expected = np_ce(z @ w, d) + 0.7 * (input_grad**2).sum(-1).mean()
    got = discriminator_loss(lambda u: u @ jnp.asarray(w), jnp.asarray(z), jnp.asarray(d), None, 0.7)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # CDANN's class-balanced weights: 1 / (n_y * C); they sum to 1 when every class is present
    y = jnp.array([0, 0, 1, 1, 1, 1])
    wts = class_balance_weights(y, 2)
    np.testing.assert_allclose(wts, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    per = -np.log(p[np.arange(6), d])
    got_w = discriminator_loss(lambda u: u @ jnp.asarray(w), jnp.asarray(z), jnp.asarray(d), wts, 0.0)
    assert float(got_w) == pytest.approx(float((np.asarray(wts) * per).sum()), rel=1e-5)


def test_adam_uses_coupled_l2_like_torch():
    # torch.optim.Adam(weight_decay=wd): g <- g + wd * p, then Adam; first step moves by lr * sign(g + wd p)
    tx = adam(0.1, 0.5)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([-0.4, 0.2])}  # g + 0.5 p = [0.1, -0.8]
    upd, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(upd["w"], [-0.1, 0.1], rtol=1e-4)
