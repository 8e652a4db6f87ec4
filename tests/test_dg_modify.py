"""MoDify (mixjax.dg.algorithms.modify) and meta-causal single-source DG
(mixjax.dg.algorithms.metacausal) against their rules restated in numpy on the tiny case.

The network's forward passes are the algorithm's own (JAX); everything the rules add - the
loss bank's difficulty, the RGB shuffle, the learn/postpone/drop mask, the factors, the
adaptors, the effect-to-weight network, the losses and the test-time combination - is numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtri

from mixjax.config import ConfigError
from mixjax.dg import test_time
from mixjax.dg.algorithms import metacausal as MC
from mixjax.dg.algorithms import modify as MD

from dg_fakes import build_tiny, tiny_batches


def np_ce(logits, y):
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]


# ---------------------------------------------------------------- MoDify
def test_modify_loss_and_bank_follow_the_difficulty_rule():
    low, high = 0.2, 0.75
    alg, hp = build_tiny("modify", modify_bank=8, modify_low=low, modify_high=high)
    state = alg.init(jax.random.key(0), hp)
    bank = np.array([0.2, 0.9, 1.1, 1.3, 2.5, 0.0, 0.0, 0.0], np.float32)     # 5 filled of 8
    state = {**state, "bank": jnp.asarray(bank), "bank_count": jnp.int32(5)}
    xs, ys = tiny_batches(1)
    key = jax.random.key(3)
    loss, aux = jax.jit(alg.loss)(state["params"], hp, state, xs, ys, key)

    logits = jax.jit(alg.logits)
    x, y = np.asarray(xs).reshape(8, 5), np.asarray(ys).reshape(8)
    cdf = lambda l: (bank[:5][None, :] < l[:, None]).mean(1)               # noqa: E731
    l_da = np_ce(logits(state["params"], jnp.asarray(x)), y)
    s = 1.0 - cdf(l_da)
    perms = np.asarray(MD.channel_perms(key, 8, 5))
    assert all(sorted(p) == list(range(5)) and list(p) != list(range(5)) for p in perms)
    x_aug = (1 - s[:, None]) * x + s[:, None] * np.take_along_axis(x, perms, 1)
    l_no = np_ce(logits(state["params"], jnp.asarray(x_aug, jnp.float32)), y)
    d_no = cdf(l_no)
    learn = (d_no >= low) & (d_no <= high)
    assert 0 < learn.sum() < 8, d_no              # the case exercises the mask
    np.testing.assert_allclose(float(loss), (learn * l_no).sum() / learn.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["postpone_frac"]), (d_no > high).mean())
    np.testing.assert_allclose(float(aux["drop_frac"]), (d_no < low).mean())
    np.testing.assert_allclose(float(aux["strength"]), s.mean(), rtol=1e-6)
    # the bank: a ring of the last 8 original-example losses, the newest written after the 5th
    ring = np.concatenate([bank[:5], l_da])[-8:]
    np.testing.assert_allclose(np.roll(np.asarray(aux["bank"]), -5), ring, rtol=1e-5)
    assert int(aux["bank_count"]) == 13
    # an empty bank: every difficulty is 0.5 (shuffle at half strength, every example learned)
    d = MD.difficulty(jnp.asarray([0.1, 5.0]), jnp.zeros(4), jnp.int32(0))
    np.testing.assert_array_equal(np.asarray(d), [0.5, 0.5])


# ---------------------------------------------------------------- meta-causal
def np_factors(x, v, eps):
    """The eight factors restated: x f64[n, d] (1-D examples: flip on the last axis), v f64[n]."""
    v = v[:, None]
    mean = x.mean(1, keepdims=True)
    grey = x.mean(-1, keepdims=True)     # 1-D example: the channel axis is the example itself
    levels = 2.0 ** np.maximum(1.0, np.floor(4.0 * v))
    return np.stack([x * (0.1 + 1.8 * v), mean + (x - mean) * (0.1 + 1.8 * v), grey + (x - grey) * (0.1 + 1.8 * v),
                     1.0 - x, np.where(x >= v, 1.0 - x, x), np.floor(x * levels) / levels, x + 0.1 * v * eps,
                     x[:, ::-1]])


def np_mlp(p, z):
    """Linear -> ReLU -> Linear (the adaptors and E)."""
    w0, b0, w1, b1 = (np.asarray(p["layers"][i][k], np.float64) for i in (0, 1) for k in ("kernel", "bias"))
    return np.maximum(z @ w0 + b0, 0.0) @ w1 + b1


def np_views(alg, x, key):
    u, eps = (np.asarray(a, np.float64) for a in MC.draws(key, jnp.asarray(x, jnp.float32), alg.levels))
    nf, n = MC.NUM_FACTORS, len(x)
    count, v = 1 + np.floor(u[:, 0] * nf), np.floor(u[:, 1] * 31) / 30
    ops = np.floor(u[:, 2:] * nf).astype(int)
    x_ra = x.copy()
    for slot in range(nf):
        cand = np_factors(x_ra, v, eps[slot])
        x_ra = np.where((slot < count)[:, None], cand[ops[:, slot], np.arange(n)], x_ra)
    x_fa = np_factors(x, np.full(n, 4 / 30), eps[nf])
    cf = np.stack([np_factors(x_ra, np.full(n, lv), eps[nf + 1 + i])
                   for i, lv in enumerate(np.linspace(0, 1, alg.levels))], 1)     # [J, L, n, d]
    return x_ra, x_fa, cf


def test_metacausal_views_and_loss_match_numpy():
    alg, hp = build_tiny("metacausal", metacausal_lambda_re=0.7, metacausal_lambda_causal=1.3, metacausal_levels=3)
    state = alg.init(jax.random.key(0), hp)
    xs, ys = tiny_batches(2)
    key = jax.random.key(5)
    x, y = np.asarray(xs, np.float64).reshape(8, 5), np.asarray(ys).reshape(8)
    nf, levels = MC.NUM_FACTORS, 3
    x_ra, x_fa, cf = np_views(alg, x, key)
    views = np.asarray(jax.jit(alg.views)(jnp.asarray(x, jnp.float32), key), np.float64)
    np.testing.assert_allclose(views[1], x_ra, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(views[2:2 + nf], x_fa, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(views[2 + nf:].reshape(nf, levels, 8, 5), cf, rtol=1e-5, atol=1e-5)

    loss, aux = jax.jit(alg.loss)(state["params"], hp, state, xs, ys, key)
    params, causal = state["params"], state["causal"]
    feat = lambda a: np.asarray(jax.jit(alg.features)(params, jnp.asarray(a.reshape(-1, 5), jnp.float32)),  # noqa: E731
                                np.float64).reshape(*a.shape[:-1], -1)
    wc = np.asarray(params["classifier"]["kernel"], np.float64)
    bc = np.asarray(params["classifier"]["bias"], np.float64)
    head = lambda z: z @ wc + bc                                                  # noqa: E731
    maps = [jax.tree.map(lambda a, j=j: a[j], causal["maps"]) for j in range(nf)]
    f, f_ra, f_fa, f_cf = feat(x), feat(x_ra), feat(x_fa), feat(cf)
    f_adapt = np.stack([np_mlp(maps[j], f_fa[j]) for j in range(nf)])
    cls_map = np_ce(head(f_adapt), np.broadcast_to(y, (nf, 8))).mean()
    re_map = ((f_adapt - f[None]) ** 2).mean()
    effect = (head(f_ra)[None, None] - head(f_cf)).mean(1)                        # [J, n, C]
    w = np_mlp(causal["e2w"], effect)[..., 0].T                                    # [n, J]
    alpha = np.exp(w - w.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    f_adapt_ra = sum(alpha[:, j:j + 1] * np_mlp(maps[j], f_ra) for j in range(nf))
    cls_causal, re_causal = np_ce(head(f_adapt_ra), y).mean(), ((f_adapt_ra - f) ** 2).mean()
    cls = np_ce(head(f), y).mean()
    expected = cls + cls_map + 0.7 * re_map + 1.3 * (0.7 * re_causal + cls_causal)
    for name, value in [("cls_loss", cls), ("cls_mapping", cls_map), ("re_mapping", re_map),
                        ("cls_causal", cls_causal), ("re_causal", re_causal)]:
        np.testing.assert_allclose(float(aux[name]), value, rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)

    # test time (evaluate_causal): the effects of do(T_j = v_l) on the test input itself
    assert test_time.uses_hook(alg)
    tt = alg.test_time_init(state, {})
    logits, tt2 = jax.jit(alg.predict_with_state)(state, tt, xs[0], jnp.asarray([True, True, True, False]))
    u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(0), 0), (levels, 4, 5),
                                      minval=1e-6, maxval=1 - 1e-6), np.float64)
    x0 = x[:4]
    cf0 = np.stack([np_factors(x0, np.full(4, lv), ndtri(u[i])) for i, lv in enumerate(np.linspace(0, 1, levels))], 1)
    f0 = feat(x0)
    w0 = np_mlp(causal["e2w"], (head(f0)[None, None] - head(feat(cf0))).mean(1))[..., 0].T
    a0 = np.exp(w0 - w0.max(1, keepdims=True))
    a0 /= a0.sum(1, keepdims=True)
    expected_logits = head(sum(a0[:, j:j + 1] * np_mlp(maps[j], f0) for j in range(nf)))
    np.testing.assert_allclose(np.asarray(logits), expected_logits, rtol=1e-4, atol=1e-5)
    assert int(tt2["chunk"]) == 1 and float(tt2["cost"]) == 3 * nf * levels


def test_sizes_that_cannot_work_are_refused_before_compiling():
    for name, bad in [("modify", {"modify_bank": 0}), ("metacausal", {"metacausal_levels": 1})]:
        alg, hp = build_tiny(name, **bad)
        with pytest.raises(ConfigError, match=f"algorithm '{name}' needs {next(iter(bad))}"):
            alg.init(jax.random.key(0), hp)
