"""MMLD (mixjax.dg.algorithms.mmld) against its rule restated in numpy: online k-means on the
style statistics (running means per centroid), the inverse-cluster-size discriminator weights
and weighted CE (mil-tokyo/dg_mmld main.py, torch CrossEntropyLoss(weight)), the gradient
reversal, and the one-step loss CE + CE_omega + ramp * entropy (train/general.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg.algorithms.mmld import cluster_weights, grad_reverse, online_kmeans, ramp, weighted_ce
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

NET = NetSpec(input_shape=(4, 4, 1), num_classes=3, featurizer="cnn", cnn_widths=(8, 8, 8, 16))


def np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def test_online_kmeans_keeps_running_means_and_weights_match_numpy():
    rng = np.random.default_rng(0)
    c0 = rng.normal(size=(3, 2))
    batches = [rng.normal(size=(7, 2)) for _ in range(3)]
    cents, counts = jnp.asarray(c0, jnp.float32), jnp.zeros(3)
    np_c, members = c0.copy(), [[] for _ in range(3)]
    for s in batches:
        labels, cents, counts = jax.jit(online_kmeans)(cents, counts, jnp.asarray(s, jnp.float32))
        want = ((s[:, None] - np_c[None]) ** 2).sum(-1).argmin(1)
        np.testing.assert_array_equal(np.asarray(labels), want)
        for i, l in enumerate(want):
            members[l].append(s[i])
        np_c = np.stack([np.mean(m, 0) if m else np_c[c] for c, m in enumerate(members)])   # mean of all received
        np.testing.assert_allclose(np.asarray(cents), np_c, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(counts), [len(m) for m in members])
    n = np.asarray([len(m) for m in members], float)
    w = np.where(n > 0, 1 / np.maximum(n, 1), 0)
    w = w / w.sum() * 3
    np.testing.assert_allclose(np.asarray(cluster_weights(counts)), w, rtol=1e-6)
    logits = rng.normal(size=(5, 3))
    lab = np.asarray([0, 2, 2, 1, 0])
    ce = -np_log_softmax(logits)[np.arange(5), lab]
    np.testing.assert_allclose(float(weighted_ce(jnp.asarray(logits), jnp.asarray(lab), jnp.asarray(w))),
                               (w[lab] * ce).sum() / w[lab].sum(), rtol=1e-5)
    # the gradient reversal: identity forward, -alpha * gradient backward
    z, v = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    np.testing.assert_array_equal(grad_reverse(z, 0.3), z)
    np.testing.assert_allclose(jax.grad(lambda q: (grad_reverse(q, 0.3) * v).sum())(z), -0.3 * v, rtol=1e-6)


def test_mmld_step_loss_and_reversed_featuriser_gradient():
    alg, hp = build_algorithm("mmld", NET, num_envs=2, batch_size=4, mlp_width=8, mlp_depth=3,
                              mmld_ramp_steps=10.0, mmld_entropy_weight=0.5, mmld_grl_weight=2.0)
    assert int(alg.static_hp("mmld_domains")) == 3 and alg.needs_feature_map
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(2, 4, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray([[0, 1, 2, 1], [2, 0, 0, 1]], jnp.int32)
    state = alg.init(jax.random.key(0), hp)
    x, y = xs.reshape(8, 4, 4, 1), ys.reshape(-1)
    step = 4.0
    r = float(ramp(step, 10.0))
    np.testing.assert_allclose(r, 2 / (1 + np.exp(-4.0)) - 1, rtol=1e-6)

    @jax.jit
    def run(state):
        labels, cents, counts = alg.pseudo_domains(state, x, jax.random.key(2))
        trainable = (state["params"], state["disc"])
        (loss, m), grads = jax.value_and_grad(alg.objective, has_aux=True)(trainable, hp, x, y, labels, counts, step)
        z = alg.features(state["params"], x)
        alpha = r * 2.0

        def no_reversal(p):   # the featuriser's rule: task loss minus alpha x the discriminator loss
            z_ = alg.features(p, x)
            lg = alg.classify(p, z_)
            lp = jax.nn.log_softmax(lg)
            task = -lp[jnp.arange(8), y].mean() + r * 0.5 * -(jnp.exp(lp) * lp).sum(-1).mean()
            dom = weighted_ce(alg.disc_module.merge(state["disc"])(z_), labels, cluster_weights(counts))
            return task - alpha * dom

        want = jax.grad(no_reversal)(state["params"])
        return (labels, counts, loss, m, grads, alg.disc_module.merge(state["disc"])(z), alg.classify(state["params"], z),
                want)

    labels, counts, loss, m, grads, d_logits, logits, want = run(state)
    lab, n = np.asarray(labels), np.asarray(counts)
    assert n.sum() == 8 and (np.bincount(lab, minlength=3) == n).all()   # first step: counts = this batch
    w = np.where(n > 0, 1 / np.maximum(n, 1), 0)
    w = w / w.sum() * 3
    ce_d = -np_log_softmax(np.asarray(d_logits, np.float64))[np.arange(8), lab]
    lp = np_log_softmax(np.asarray(logits, np.float64))
    ce, ent = -lp[np.arange(8), np.asarray(y)].mean(), -(np.exp(lp) * lp).sum(-1).mean()
    dom = (w[lab] * ce_d).sum() / w[lab].sum()
    np.testing.assert_allclose(float(m["disc_loss"]), dom, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce + dom + r * 0.5 * ent, rtol=1e-5)
    # featuriser: task gradient minus alpha x the discriminator loss's gradient (GRL)
    for a, b in zip(jax.tree.leaves(grads[0]["featurizer"]), jax.tree.leaves(want["featurizer"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
