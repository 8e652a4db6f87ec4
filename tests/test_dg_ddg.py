"""DDG (mixjax.dg.algorithms.ddg) against its rule restated in numpy (hlzhang109/DDG
``algorithms.py`` ``DDG.gen_update`` / ``gan_update`` / ``dis_update`` / ``step``,
``networks.py`` ``MsImageDis.calc_dis_loss`` / ``calc_gen_loss``): the generator pre-training
loss (LSGAN + reconstruction) and the discriminator's loss with its R1 term, the DG stage's
primal loss with the dual step on the reconstruction constraint, the in-batch pairs, and the
stage switch (frozen copy, fresh Adams, idle discriminator, dual variable)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg.algorithms.ddg import grey, pairs

from dg_fakes import build_tiny, tiny_batches

HP = dict(ddg_margin=0.3, ddg_eta=0.5, ddg_recon_id_w=0.7, ddg_recon_x_w=2.0, ddg_lambda0=0.4, ddg_gen_steps=2,
          ddg_gan_w=0.6)


def np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def np_ce(logits, y):
    return -np_log_softmax(logits)[np.arange(len(y)), y].mean()


def np_mlp(tree, x):
    f64 = lambda a: np.asarray(a[...], np.float64)   # noqa: E731
    layers = [(f64(tree["layers"][i]["kernel"]), f64(tree["layers"][i]["bias"])) for i in range(len(tree["layers"]))]
    for k, b in layers[:-1]:
        x = np.maximum(x @ k + b, 0.0)
    return x @ layers[-1][0] + layers[-1][1]


def np_mlp_input_grad(tree, x):
    """d sum(mlp(x)) / dx for a ReLU MLP (backpropagation by hand)."""
    ks = [np.asarray(tree["layers"][i]["kernel"][...], np.float64) for i in range(len(tree["layers"]))]
    bs = [np.asarray(tree["layers"][i]["bias"][...], np.float64) for i in range(len(tree["layers"]))]
    masks, h = [], x
    for k, b in zip(ks[:-1], bs[:-1]):
        a = h @ k + b
        masks.append(a > 0)
        h = np.maximum(a, 0.0)
    g = np.ones((x.shape[0], 1)) @ ks[-1].T
    for k, m in zip(ks[-2::-1], masks[::-1]):
        g = (g * m) @ k.T
    return g


def np_linear(tree, z):
    return z @ np.asarray(tree["kernel"][...], np.float64) + np.asarray(tree["bias"][...], np.float64)


@pytest.fixture(scope="module")
def ddg():
    alg, hp = build_tiny("ddg", **HP)
    state = alg.init(jax.random.key(0), hp)
    other = alg.init(jax.random.key(1), hp)           # a frozen copy that differs from the live one
    state = {**state, "pre": {"params": other["params"], "gen": other["gen"]}}
    xs, ys = tiny_batches()
    return alg, hp, state, xs.reshape(8, 5), ys.reshape(-1)


def test_pairs_are_a_permutation_and_same_label_positives():
    y = jnp.asarray([0, 1, 1, 2, 1, 0, 3, 0], jnp.int32)
    for seed in range(3):
        perm, pos = (np.asarray(a) for a in jax.jit(pairs)(jax.random.key(seed), y))
        assert sorted(perm) == list(range(8))
        yn = np.asarray(y)
        assert (yn[pos] == yn).all()
        alone = np.asarray([(yn == c).sum() == 1 for c in yn])
        assert (pos[~alone] != np.arange(8)[~alone]).all() and (pos[alone] == np.arange(8)[alone]).all()
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(grey(jnp.asarray(x))), x.mean(-1), rtol=1e-6)   # the code's to_gray


def test_objective_matches_numpy_in_both_stages(ddg):
    alg, hp, state, x, y = ddg
    perm = jnp.asarray([3, 0, 6, 1, 7, 2, 5, 4], jnp.int32)
    pos = jnp.asarray([5, 2, 4, 3, 6, 0, 1, 1], jnp.int32)   # y = [0 1 1 2 1 0 1 1]: same labels (2 alone)
    assert (np.asarray(y)[np.asarray(pos)] == np.asarray(y)).all()
    obj = jax.jit(alg.objective)
    lam = jnp.float32(0.4)
    got = {s: obj(state["params"], state["gen"], state["pre"], lam, hp, x, y, perm, pos, jnp.bool_(s), state["disc"])
           for s in (0, 1)}

    feats = jax.jit(alg.features)
    xn, yn, pn, qn = np.asarray(x, np.float64), np.asarray(y), np.asarray(perm), np.asarray(pos)
    P, G, pre = state["params"], state["gen"], state["pre"]
    z = np.asarray(feats(P, x), np.float64)
    logits = np_linear(P["classifier"], z)
    v = np_mlp(G["enc"], xn)
    dec = lambda g, vv, s: np_mlp(g["dec"], np.concatenate([vv, s], 1))   # noqa: E731
    l1 = lambda r: np.abs(r - xn).mean(1)                                  # noqa: E731
    # stage 0: gan_w * LSGAN generator loss on the swapped decodes + recon_x_w * (L1(a) + L1(b))
    # from the semantic code, plus ERM on a
    rec0 = l1(dec(G, v, z))
    d = lambda u: np_mlp(state["disc"], u)[:, 0]                           # noqa: E731
    x_ba0, x_ab0 = dec(G, v[pn], z), dec(G, v, z[pn])
    adv = 2 * np.mean((d(x_ba0) - 1) ** 2) + 2 * np.mean((d(x_ab0) - 1) ** 2)
    loss0 = 0.6 * adv + 2.0 * (rec0.mean() + rec0[pn].mean()) + np_ce(logits, yn)
    # the discriminator's loss: LSGAN on (fake, real) pairs + 0.01 x R1 on the reals
    d_loss = 0.6 * sum(np.mean(d(f) ** 2) + np.mean((d(r) - 1) ** 2)
                       + 0.01 * np.mean((np_mlp_input_grad(state["disc"], r) ** 2).sum(1))
                       for f, r in ((x_ba0, xn), (x_ab0, xn[pn])))
    fakes = (jnp.asarray(x_ba0, jnp.float32), jnp.asarray(x_ab0, jnp.float32))
    got_d = jax.jit(alg.disc_loss)(state["disc"], hp, fakes, (x, x[perm]))
    np.testing.assert_allclose(float(got_d), d_loss, rtol=2e-5)
    # stage 1
    r_a = l1(dec(G, v, z[qn]))
    r_b = r_a[pn]
    hinge = np.maximum(r_a - 0.3, 0).mean() + np.maximum(r_b - 0.3, 0).mean()
    lam_new = np.clip(0.4 + 0.5 * (r_a.mean() - 0.3), 0.0, 1.0)
    z_pre = np.asarray(feats(pre["params"], x), np.float64)
    v_pre = np_mlp(pre["gen"]["enc"], xn)
    x_ba, x_ab = dec(pre["gen"], v_pre[pn], z_pre), dec(pre["gen"], v_pre, z_pre[pn])
    def cls(xx):
        return np_linear(P["classifier"], np.asarray(feats(P, jnp.asarray(xx, jnp.float32)), np.float64))
    gen_ce = np_ce(cls(x_ba), yn) + np_ce(cls(x_ab), yn[pn])
    ce_real = (np_ce(logits, yn) + np_ce(logits[pn], yn[pn]) + np_ce(logits[qn], yn) + np_ce(logits[qn][pn], yn[pn]))
    loss1 = ce_real + lam_new * hinge + 0.7 * gen_ce

    (l0, a0), (l1_, a1) = got[0], got[1]
    np.testing.assert_allclose(float(l0), loss0, rtol=2e-5)
    np.testing.assert_allclose(float(a0["lam"]), 0.4, rtol=1e-6)                    # no dual step in stage 0
    np.testing.assert_allclose(float(a0["adv"]), adv, rtol=2e-5)
    np.testing.assert_allclose(float(l1_), loss1, rtol=2e-5)
    np.testing.assert_allclose(float(a1["lam"]), lam_new, rtol=1e-5)
    np.testing.assert_allclose(float(a1["hinge"]), hinge, rtol=1e-5)
    np.testing.assert_allclose(float(a1["gen_ce"]), gen_ce, rtol=1e-5)
    assert 0.0 < lam_new < 1.0 and hinge > 0       # both the dual step and the hinge are active here


def test_stage_switch_freezes_a_copy_resets_adam_and_steps_the_dual(ddg):
    alg, hp, _, x, y = ddg
    xs, ys = x.reshape(2, 4, 5), y.reshape(2, 4)
    state = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    init_pre, init_disc = state["pre"], state["disc"]
    same = lambda a, b: all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    for i in range(2):                                   # stage 0: the copy and the dual variable stay
        state, m = update(hp, state, xs, ys, jax.random.key(i))
        assert float(m["stage"]) == 0.0 and float(state["lam"]) == pytest.approx(0.4)
    assert same(state["pre"], init_pre) and not same(state["disc"], init_disc)   # D trains in stage 0
    before = {"params": state["params"], "gen": state["gen"]}
    perm, pos = jax.jit(pairs)(jax.random.key(2), y)
    _, aux = jax.jit(alg.objective)(state["params"], state["gen"], before, state["lam"], hp, x, y, perm, pos,
                                    jnp.bool_(True), state["disc"])
    disc_before = state["disc"]
    state, m = update(hp, state, xs, ys, jax.random.key(2))
    assert same(state["disc"], disc_before)                              # and is idle in stage 1
    assert float(m["stage"]) == 1.0 and same(state["pre"], before)        # the frozen copy = the state at the switch
    assert int(state["opt"][1].count) == 1 and int(state["gen_opt"][1].count) == 1   # fresh Adams
    np.testing.assert_allclose(float(state["lam"]), float(aux["lam"]), rtol=1e-6)
    assert not same(state["params"], before["params"]) and not same(state["gen"], before["gen"])
    logits = alg.predict(state, x)                                          # prediction: w(phi(x))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(alg.logits(state["params"], x)), rtol=1e-6)
