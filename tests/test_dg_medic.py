"""MEDIC (mixjax.dg.algorithms.medic) and the open-set metrics (mixjax.dg.openset) against their
rules restated in numpy: the OVA loss and score of zzwdx/MEDIC, the dualistic meta-train /
meta-test split and its second-order step, closed-set accuracy / AUROC / OSCR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dg_fakes import build_tiny, tiny_batches
from mixjax.dg.algorithms.medic import known_prob, ova_rows
from mixjax.dg.openset import open_set_metrics
from mixjax.errors import ConfigError


def np_softmax2(b, c):
    q = b.reshape(len(b), 2, c)
    e = np.exp(q - q.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ova(b, y, c):
    """OVALoss.forward: 0.5 (mean -log q1[y] + mean max_{c != y} -log q0[c])."""
    q = np_softmax2(np.asarray(b, np.float64), c)
    pos = np.array([-np.log(q[n, 1, y[n]] + 1e-8) for n in range(len(y))])
    neg = np.array([max(-np.log(q[n, 0, k] + 1e-8) for k in range(c) if k != y[n]) for n in range(len(y))])
    return 0.5 * (pos + neg)


def test_ova_loss_and_known_score_match_the_reference_formulas():
    rng = np.random.default_rng(0)
    logits, b = rng.normal(size=(6, 4)), 3 * rng.normal(size=(6, 8))
    y = np.array([0, 3, 1, 2, 2, 0])
    np.testing.assert_allclose(ova_rows(jnp.asarray(b, jnp.float32), jnp.asarray(y)), np_ova(b, y, 4), rtol=1e-5)
    want = np_softmax2(b, 4)[np.arange(6), 1, logits.argmax(1)]
    np.testing.assert_allclose(known_prob(jnp.asarray(logits, jnp.float32), jnp.asarray(b, jnp.float32)), want,
                               rtol=1e-5)


def test_medic_step_is_the_dualistic_second_order_meta_step():
    alg, hp = build_tiny("medic", medic_meta_lr=0.5)
    xs, ys = tiny_batches(2)
    state = alg.init(jax.random.key(0), hp)
    key = jax.random.key(4)            # its class set is {1}: every meta-train / meta-test term has rows
    assert np.flatnonzero(np.asarray(alg.split(state, ys, key)[1])).tolist() == [1]
    d, s = 0, {1}                      # step 0 -> held-out domain 0; (3 - 1) // 3 + 1 = 1 class
    x, y = np.asarray(xs), np.asarray(ys)

    def batch_loss(p, xb, yb):         # mean CE + OVA of one selected batch, as the code's criterion + ovaloss
        if len(yb) == 0:
            return 0.0
        lg, bl = alg.heads(p, jnp.asarray(xb))
        lse = jax.nn.logsumexp(lg, -1)
        ce = (lse - lg[np.arange(len(yb)), yb]).mean()
        q = jax.nn.softmax(bl.reshape(len(yb), 2, -1), axis=1)
        onehot = np.eye(3)[yb]
        pos = (-jnp.log(q[:, 1, :] + 1e-8) * onehot).sum(1).mean()
        neg = (-jnp.log(q[:, 0, :] + 1e-8) * (1 - onehot)).max(1).mean()
        return ce + 0.5 * (pos + neg)

    ins = np.isin(y, list(s))
    tr_sets = [(x[e][~ins[e]], y[e][~ins[e]]) for e in range(2) if e != d] + [(x[d][ins[d]], y[d][ins[d]])]
    others = [e for e in range(2) if e != d]
    te_o = (np.concatenate([x[e][ins[e]] for e in others]), np.concatenate([y[e][ins[e]] for e in others]))
    te_d = (x[d][~ins[d]], y[d][~ins[d]])
    assert all(len(b[1]) for b in tr_sets + [te_o, te_d])

    def total(p):
        l_tr = lambda q: sum(batch_loss(q, *b) for b in tr_sets)  # noqa: E731
        fast = jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(l_tr)(p))
        return l_tr(p) + batch_loss(fast, *te_o) + 2 * batch_loss(fast, *te_d)

    params = state["params"]
    val, g = jax.jit(jax.value_and_grad(total))(params)
    new, m = jax.jit(alg.update)(hp, state, xs, ys, key)
    np.testing.assert_allclose(float(m["loss"]), float(val), rtol=1e-5)
    # torch Adam's first step with weight decay 0: x - lr * g / (|g| + 1e-8)
    assert float(hp["weight_decay"]) == 0.0
    for got, w, gw in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(params), jax.tree.leaves(g)):
        w, gw = np.asarray(w, np.float64), np.asarray(gw, np.float64)
        np.testing.assert_allclose(np.asarray(got), w - float(hp["lr"]) * gw / (np.abs(gw) + 1e-8), rtol=1e-5,
                                   atol=1e-6)
    assert int(new["step"]) == 1 and int(alg.split(new, ys, key)[0]) == 1   # the held-out domain cycles
    sc = alg.known_score(new, xs[0])
    assert sc.shape == (4,) and bool(((sc > 0) & (sc < 1)).all())
    assert alg.predict(new, xs[0]).shape == (4, 3)


def np_oscr(correct, sk, su):
    order = sorted(range(len(sk) + len(su)), key=lambda i: -np.concatenate([sk, su])[i])
    cx = cy = area = 0.0
    for i in order:
        nx, ny = cx + (i >= len(sk)) / len(su), cy + (i < len(sk) and correct[i]) / len(sk)
        area += (nx - cx) * (cy + ny) / 2
        cx, cy = nx, ny
    return area


def test_open_set_metrics_match_their_definitions():
    rng = np.random.default_rng(1)
    pred, y = rng.integers(0, 3, 9), rng.integers(0, 3, 9)
    sk, su = rng.uniform(size=9), rng.uniform(size=5) - 0.2
    got = open_set_metrics(pred, y, sk, su)
    auroc = np.mean([(a > b) + 0.5 * (a == b) for a in sk for b in su])      # Mann-Whitney
    assert got == pytest.approx({"closed_acc": np.mean(pred == y), "auroc": auroc, "oscr": np_oscr(pred == y, sk, su)})
    with pytest.raises(ConfigError, match="unknown scores"):
        open_set_metrics(pred, y, sk, [])
