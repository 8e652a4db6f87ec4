"""TTSS (mixjax.dg.algorithms.ttss) and the Gramian invariance penalty
(mixjax.dg.algorithms.irm_gram) against their rules restated in numpy: style statistics,
style balancing, the running per-domain styles and the test-time shift (Park et al., ICML
2023); the penalty ||G_e^{-1} grad_W CE_e||^2 with the representation's Gramian (Khezeli et
al., arXiv 2106.09777)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg import algorithms as A
from mixjax.dg import test_time
from mixjax.dg.algorithms.ttss import balance_targets, early_map, rest_features
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

K, B, C = 2, 6, 3
CNN = NetSpec(input_shape=(6, 6, 2), num_classes=C, featurizer="cnn", cnn_widths=(16, 16, 16, 16))


def build(name, net, **override):
    return build_algorithm(name, net, num_envs=K, batch_size=B, **override)


def batches(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(K, B, *shape)), jnp.float32),
            jnp.asarray(rng.integers(0, C, (K, B)), jnp.int32))


def np_softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(logits, y):
    p = np_softmax(logits)
    return -np.mean(np.log(p[np.arange(len(y)), y]))


def np_style(h):
    return h.mean(axis=(1, 2)), np.sqrt(h.var(axis=(1, 2)) + 1e-6)


def np_adain(h, mu, sig, m, s):
    return (h - mu[:, None, None]) / sig[:, None, None] * s[:, None, None] + m[:, None, None]


# ---------------------------------------------------------------- Gramian penalty


def test_gram_penalty_loss_matches_numpy():
    net = NetSpec(input_shape=(5,), num_classes=C, featurizer="mlp", mlp_width=4)
    alg, hp = build("irm_gram", net, gram_penalty_anneal_iters=3, gram_lambda=7.0, gram_eps=0.05)
    xs, ys = batches((5,))
    state = jax.jit(alg.init)(jax.random.key(0), hp)
    params = state["params"]
    z = np.asarray(jax.jit(alg.features)(params, xs.reshape(K * B, 5)), np.float64).reshape(K, B, -1)
    w = np.asarray(params["classifier"]["kernel"][...], np.float64)
    bias = np.asarray(params["classifier"]["bias"][...], np.float64)
    nll, pen = [], []
    for e in range(K):
        y = np.asarray(ys[e])
        phi = np.hstack([z[e], np.ones((B, 1))])
        logits = z[e] @ w + bias
        nll.append(np_ce(logits, y))
        g = phi.T @ phi / B
        g += 0.05 * np.trace(g) / g.shape[0] * np.eye(g.shape[0])
        grad = phi.T @ (np_softmax(logits) - np.eye(C)[y]) / B
        pen.append(np.sum(np.linalg.solve(g, grad) ** 2))
    loss_fn = jax.jit(alg.loss)
    for step, weight in ((0, 1.0), (3, 7.0)):        # before the anneal: 1, from it: gram_lambda
        s = {**state, "step": jnp.int32(step)}
        loss, m = loss_fn(params, hp, s, xs, ys, jax.random.key(0))
        np.testing.assert_allclose(float(m["penalty"]), np.mean(pen), rtol=2e-4)
        np.testing.assert_allclose(float(loss), np.mean(nll) + weight * np.mean(pen), rtol=2e-4)
    # the paper's identity behind the penalty (squared loss, exact Gramian): G^{-1} grad_w R = 2 (w - w*)
    rng = np.random.default_rng(3)
    phi, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    wv = rng.normal(size=3)
    gram = phi.T @ phi / 40
    w_star = np.linalg.solve(gram, phi.T @ y / 40)
    grad = 2 * phi.T @ (phi @ wv - y) / 40
    np.testing.assert_allclose(np.linalg.solve(gram, grad), 2 * (wv - w_star), rtol=1e-10)


# ---------------------------------------------------------------- TTSS


@pytest.fixture(scope="module")
def ttss():
    alg, hp = build("ttss", CNN, ttss_threshold=1.5)
    xs, ys = batches(CNN.input_shape)
    s0 = jax.jit(alg.init)(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    s1, m1 = update(hp, s0, xs, ys, jax.random.key(1))
    s2, m2 = update(hp, s1, xs, ys, jax.random.key(2))
    return alg, hp, xs, ys, s0, s1, s2, m2


def test_style_layer_split_recomposes_the_featurizer():
    for net in (CNN, NetSpec(input_shape=(6, 6, 2), num_classes=C, featurizer="resnet", resnet_widths=(8, 16))):
        alg, hp = build("ttss", net)
        f = alg.model.merge(alg.model.init(jax.random.key(0))).featurizer
        x = batches(net.input_shape)[0][0]
        np.testing.assert_allclose(rest_features(f, early_map(f, x)), f(x), rtol=1e-5, atol=1e-6)


def test_style_balancing_spreads_each_class_over_the_domains():
    y = jnp.asarray([0, 0, 0, 1, 1, 2, 0, 1, 1, 1, 1, 2], jnp.int32)    # K = 2 envs of 6, imbalanced
    for seed in range(3):
        t, j = map(np.asarray, balance_targets(jax.random.key(seed), y, K, B))
        for c in range(C):
            counts = np.bincount(t[np.asarray(y) == c], minlength=K)
            assert counts.max() - counts.min() <= 1, (seed, c, counts)
        np.testing.assert_array_equal(j // B, t)                          # donors come from domain t


def test_ttss_training_step_matches_numpy(ttss):
    alg, hp, xs, ys, s0, s1, s2, m2 = ttss
    net = alg.model.merge(s1["params"])
    x, y = xs.reshape(K * B, *CNN.input_shape), np.asarray(ys).reshape(-1)
    h = np.asarray(jax.jit(lambda a: early_map(net.featurizer, a))(x), np.float64)
    mu, sig = np_style(h)
    dm, ds = mu.reshape(K, B, -1).mean(1), sig.reshape(K, B, -1).mean(1)
    spread = np.array([np.mean(np.linalg.norm(mu.reshape(K, B, -1)[e] - dm[e], axis=1)
                               + np.linalg.norm(sig.reshape(K, B, -1)[e] - ds[e], axis=1)) for e in range(K)])
    # running styles: step 1 (s1 -> s2) is 0.9 * old + 0.1 * batch
    for key, new in (("style_mu", dm), ("style_sig", ds), ("style_spread", spread)):
        np.testing.assert_allclose(np.asarray(s2[key]), 0.9 * np.asarray(s1[key]) + 0.1 * new, rtol=1e-4, atol=1e-6)
    # the loss: balanced styles (the step's own targets), then the rest of the network
    t, j = map(np.asarray, balance_targets(jax.random.key(2), jnp.asarray(y), K, B))
    shift = t != np.repeat(np.arange(K), B)
    assert 0 < shift.sum() < K * B
    hb = np.where(shift[:, None, None, None], np_adain(h, mu, sig, mu[j], sig[j]), h)
    logits = np.asarray(jax.jit(lambda a: net.classifier(rest_features(net.featurizer, a)))(jnp.asarray(hb, jnp.float32)))
    np.testing.assert_allclose(float(m2["loss"]), np_ce(logits.astype(np.float64), y), rtol=1e-4)
    # the first step copies the batch styles
    h0 = np.asarray(early_map(alg.model.merge(s0["params"]).featurizer, x), np.float64)
    np.testing.assert_allclose(np.asarray(s1["style_mu"]), np_style(h0)[0].reshape(K, B, -1).mean(1), rtol=1e-4, atol=1e-6)


def test_test_time_shift_matches_numpy_and_changes_predictions(ttss):
    alg, hp, xs, ys, s0, s1, s2, m2 = ttss
    state = s2
    net = alg.model.merge(state["params"])
    early = jax.jit(lambda a: early_map(net.featurizer, a))
    rest = jax.jit(lambda a: net.classifier(rest_features(net.featurizer, a)))
    init, step = jax.jit(alg.test_time_init), jax.jit(alg.predict_with_state)
    plain = np.asarray(jax.jit(alg.predict)(state, xs[0]))
    # a threshold nothing exceeds: the hook is plain prediction
    never = {**state, "threshold": jnp.float32(1e6)}
    logits, tt = step(never, init(never, {}), xs[0], jnp.ones(B, bool))
    assert float(tt["cost"]) == 0
    np.testing.assert_allclose(np.asarray(logits), plain, rtol=1e-5, atol=1e-6)
    # a style-shifted chunk (scaled, offset per channel), the last row padding
    x = np.concatenate([np.asarray(xs[0]) * np.array([4.0, 0.3]) + np.array([2.0, -1.0]),
                        np.asarray(xs[1]) * 3.0])
    valid = np.ones(2 * B, bool)
    valid[-1] = False
    h = np.asarray(early(jnp.asarray(x, jnp.float32)), np.float64)
    mu, sig = np_style(h)
    m, s, spread = (np.asarray(state[k], np.float64) for k in ("style_mu", "style_sig", "style_spread"))
    d = np.linalg.norm(mu[:, None] - m[None], axis=-1) + np.linalg.norm(sig[:, None] - s[None], axis=-1)
    e = d.argmin(1)
    far = d.min(1) > 1.5 * spread[e]
    assert far[:B].sum() >= B // 2          # the per-channel style change is detected
    want = np.asarray(rest(jnp.asarray(np.where(far[:, None, None, None], np_adain(h, mu, sig, m[e], s[e]), h), jnp.float32)))
    logits, tt = step(state, init(state, {}), jnp.asarray(x, jnp.float32), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
    assert float(tt["cost"]) == (far & valid).sum()
    plain = np.asarray(jax.jit(alg.predict)(state, jnp.asarray(x, jnp.float32)))
    assert (np.asarray(logits).argmax(1) != plain.argmax(1)).any()    # the shift changes predictions
    assert test_time.uses_hook(alg)


def test_ttss_without_a_feature_map_is_refused(tmp_path, capsys):
    from mixjax.cli import main

    tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")   # MLP featuriser
    run = tmp_path / "run"
    assert main(["dg", "sweep", tiny, "--run-dir", str(run), "--set", "algorithms=[erm,ttss]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ttss'" in err[0] and "convolutional feature map" in err[0]
    assert not run.exists()
    with pytest.raises(ValueError, match="ttss"):
        A.get("ttss")(net=NetSpec(input_shape=(5,), num_classes=C, featurizer="mlp", mlp_width=4), num_envs=K)


@pytest.mark.slow   # a CNN sweep, mostly compilation (MIXJAX_SLOW=1)
def test_sweep_runs_ttss_through_the_test_time_hook(tmp_path, capsys):
    """`mixjax dg sweep` with TTSS on a CNN: records carry the number of shifted examples per
    environment and the accuracies without the shift; a shifted example count of 0 leaves the
    accuracy equal to plain prediction."""
    import json

    from mixjax.cli import main

    tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")
    run = tmp_path / "run"
    assert main(["dg", "sweep", tiny, "--run-dir", str(run), "--set", "steps=6", "--set", "checkpoint_freq=5",
                 "--set", "algorithms=[erm,ttss,irm_gram]", "--set", "test_envs=single", "--set", "n_hparams=1",
                 "--set", "n_trials=1", "--set", "model.featurizer=cnn", "--set", "model.cnn_widths=[16,16,16,16]"]) == 0
    recs = [json.loads(line) for f in sorted(run.glob("*/results.jsonl")) for line in f.read_text().splitlines()]
    tt = [r for r in recs if r["args"]["algorithm"] == "ttss"]
    assert len(tt) == 3 * 2 and all(np.isfinite(r["loss"]) for r in recs)
    for r in tt:
        assert r["test_time_s"] > 0
        for e in range(3):
            cost = r[f"env{e}_tt_cost"]
            assert 0 <= cost <= 40 and cost == int(cost)
            if cost == 0:
                assert r[f"env{e}_in_acc"] == r[f"env{e}_in_acc_before_tt"]
    assert "Test-time step" in (run / "results.md").read_text()
