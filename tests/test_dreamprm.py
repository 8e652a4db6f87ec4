"""DreamPRM-1.5 instance weights: the penalty engine's update restated in numpy (linear model)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax.methods import dreamprm

V, S = 7, 5


def token_loss_fn(params, batch):
    """A linear 'LM': token t predicts ``y / V`` by ``theta[x]``, squared error."""
    x, y = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    r = params["t"][x] - y.astype(jnp.float32) / V
    return 0.5 * r * r, (y != 0).astype(jnp.float32)


def np_losses(theta, tokens):
    """(l f32[B] sequence mean losses, G [B, V] their gradients, token losses, mask)."""
    x, y = tokens[:, :-1], tokens[:, 1:]
    m = (y != 0).astype(np.float64)
    r = theta[x] - y / V
    n = np.maximum(m.sum(1), 1.0)
    g = np.zeros((len(tokens), V))
    for b in range(len(tokens)):
        np.add.at(g[b], x[b], m[b] * r[b] / n[b])
    return (0.5 * r * r * m).sum(1) / n, g, 0.5 * r * r, m


def np_target(theta, tokens):
    x, y = tokens[:, :-1], tokens[:, 1:]
    m = (y != 0).astype(np.float64)
    r = theta[x] - y / V
    g = np.zeros(V)
    np.add.at(g, x.reshape(-1), (m * r).reshape(-1) / m.sum())
    return (0.5 * r * r * m).sum() / m.sum(), g


def np_net(net, tl, tm):
    q = np.exp(-tl)
    f = np.stack([q, 1 - q], -1)
    h = f @ net["w1"] + net["b1"]
    h = np.where(h > 0, h, 0.01 * h)
    out = h @ net["w2"] + net["b2"]
    return 1 / (1 + np.exp(-((out * tm).sum(1) / np.maximum(tm.sum(1), 1))))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, size=(5, S + 1))
    tokens[1, -2:] = 0                        # padding
    tokens[3] = tokens[0]                     # a repeated example: one slot, two contributions
    target = rng.integers(1, V, size=(3, S + 1))
    w0 = rng.normal(size=V) * 0.3
    u0 = w0 + rng.normal(size=V) * 0.2        # u != w: a non-zero gap
    batch = {"tokens": jnp.asarray(tokens, jnp.int32),
             "target_tokens": jnp.asarray(target, jnp.int32)}
    return tokens, target, u0, w0, batch


def _run(batch, u0, w0, p0, weights, a=4.0, lrs=(0.1, 0.05, 0.5)):
    tx_u, tx_w, tx_p = (optax.sgd(lr) for lr in lrs)
    u, w = {"t": jnp.asarray(u0, jnp.float32)}, {"t": jnp.asarray(w0, jnp.float32)}
    uwp = {"u": u, "w": w, "p": p0, "opt_u": tx_u.init(u), "opt_w": tx_w.init(w),
           "opt_p": tx_p.init(p0)}
    step = jax.jit(lambda uwp, batch: dreamprm.instance_update(
        token_loss_fn, uwp, batch, weights=weights, tx_u=tx_u, tx_w=tx_w, tx_p=tx_p, penalty=a))
    return step(uwp, batch)


def test_instance_table_update_matches_numpy_and_finite_differences(problem):
    tokens, target, u0, w0, batch = problem
    a, (lr_u, lr_w, lr_p), size, lo, hi = 4.0, (0.1, 0.05, 0.5), 8, 0.0, 3.0
    weights = dreamprm.InstanceWeights("table", "clip", lo, hi, size)
    slots = np.asarray(dreamprm.slots(batch["tokens"], size))
    assert slots[0] == slots[3]
    p0 = np.linspace(-0.5, 3.5, size)                     # some entries outside [lo, hi]
    p0[slots] = np.where(np.arange(5) == 4, 3.2, 0.4 + 0.3 * np.arange(5))[:len(slots)]
    p0[slots[3]] = p0[slots[0]]
    new, parts = _run(batch, u0, w0, jnp.asarray(p0, jnp.float32), weights, a)

    b = len(tokens)
    lu, gu, *_ = np_losses(u0, tokens)
    lw, gw, *_ = np_losses(w0, tokens)
    _, g1 = np_target(w0, target)
    s = np.clip(p0[slots], lo, hi)
    np.testing.assert_allclose(parts["s"], s, rtol=1e-6)
    np.testing.assert_allclose(new["u"]["t"], u0 - lr_u * a * (s / b) @ gu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["w"]["t"], w0 - lr_w * (a * (s / b) @ gw + g1), rtol=1e-5,
                               atol=1e-6)
    gp = np.zeros(size)
    np.add.at(gp, slots, a * ((p0[slots] > lo) & (p0[slots] < hi)) * (lw - lu) / b)
    np.testing.assert_allclose(new["p"], p0 - lr_p * gp, rtol=1e-5, atol=1e-6)
    assert np.abs(gp).max() > 1e-3 and gp[slots[4]] == 0.0         # clipped entry: no gradient

    def F(p):   # the penalty objective L1(w) + a [L2(w, p) - L2(u, p)], float64
        c = np.clip(p[slots], lo, hi) / b
        return np_target(w0, target)[0] + a * (c @ lw - c @ lu)
    eps = 1e-6
    fd = np.array([(F(p0 + eps * e) - F(p0 - eps * e)) / (2 * eps) for e in np.eye(size)])
    np.testing.assert_allclose(np.asarray(parts["gp"]), fd, rtol=1e-4, atol=1e-6)


def test_instance_net_hypergradient_matches_finite_differences(problem):
    tokens, target, u0, w0, batch = problem
    a, b = 4.0, len(tokens)
    weights = dreamprm.InstanceWeights("net", "sigmoid")
    net = dreamprm.net_init(0, 3)
    new, parts = _run(batch, u0, w0, net, weights, a)
    lu, *_ = np_losses(u0, tokens)
    lw, _, tl, tm = np_losses(w0, tokens)
    net64 = {k: np.asarray(v, np.float64) for k, v in net.items()}
    np.testing.assert_allclose(parts["s"], np_net(net64, tl, tm), rtol=1e-5)

    def F(n):
        c = np_net(n, tl, tm) / b
        return a * (c @ lw - c @ lu)
    eps = 1e-6
    for key, v in net64.items():
        fd = np.zeros(v.shape)
        for i in np.ndindex(v.shape):
            e = np.zeros(v.shape)
            e[i] = eps
            fd[i] = (F({**net64, key: v + e}) - F({**net64, key: v - e})) / (2 * eps)
        np.testing.assert_allclose(parts["gp"][key], fd, rtol=2e-3, atol=1e-7, err_msg=key)
        np.testing.assert_allclose(new["p"][key], v - 0.5 * np.asarray(parts["gp"][key]),
                                   rtol=1e-5, atol=1e-7)
    assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(parts["gp"])) > 1e-4


def test_meta_weight_net_variant_matches_finite_differences(problem):
    """Meta-Weight-Net: Linear-ReLU-Linear-sigmoid on the row's loss, weights / their mean."""
    tokens, target, u0, w0, batch = problem
    a, b = 4.0, len(tokens)
    weights = dreamprm.InstanceWeights("net", "sigmoid", feature="loss", normalize=True)
    net = dreamprm.net_init(1, 4, features=1)
    new, parts = _run(batch, u0, w0, net, weights, a)
    lu, *_ = np_losses(u0, tokens)
    lw, *_ = np_losses(w0, tokens)
    n64 = {k: np.asarray(v, np.float64) for k, v in net.items()}

    def s_of(n):
        h = np.maximum(lw[:, None] @ n["w1"] + n["b1"], 0.0)
        s = 1 / (1 + np.exp(-(h @ n["w2"] + n["b2"])))
        return s * b / s.sum()                    # every row of the batch has tokens
    np.testing.assert_allclose(parts["s"], s_of(n64), rtol=1e-5)
    F = lambda n: a * (s_of(n) / b) @ (lw - lu)   # noqa: E731
    eps = 1e-6
    for key, v in n64.items():
        fd = np.zeros(v.shape)
        for i in np.ndindex(v.shape):
            e = np.zeros(v.shape)
            e[i] = eps
            fd[i] = (F({**n64, key: v + e}) - F({**n64, key: v - e})) / (2 * eps)
        np.testing.assert_allclose(parts["gp"][key], fd, rtol=2e-3, atol=1e-7, err_msg=key)
    assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(parts["gp"])) > 1e-5


def test_hyperparameter_checks_name_the_key():
    m = dreamprm.DreamPRMMethod()
    for bad, key in [({"weights": "row"}, "weights"), ({"activation": "tanh"}, "activation"),
                     ({"lr_p": 0.0}, "lr_p"), ({"weight_min": 3.0}, "weight_min"),
                     ({"table_size": 0}, "table_size"), ({"feature": "x"}, "feature")]:
        with pytest.raises(ValueError, match=key):
            m.check({**m.hparams, **bad})


def test_domain_view_is_the_normalised_per_domain_mean_weight():
    s = jnp.asarray([1.0, 3.0, 2.0, 0.5])
    valid = jnp.asarray([True, True, True, False])
    w = dreamprm.domain_view(s, valid, jnp.asarray([0, 0, 1, 2]), 3)
    mean = np.array([2.0, 2.0, 2.0])          # domain 2 has no counted row: the batch mean
    np.testing.assert_allclose(w, mean / mean.sum(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["table", "net"])
def test_dreamprm_trains_and_resumes_its_weights_exactly(tmp_path, kind):
    """The instance table (or net) lives in mix_state: a 2+2-step resumed run equals 4 steps."""
    from mixjax.train import loop
    from train_fakes import fake_data, tiny_config

    def cfg_for(run, steps):
        cfg = tiny_config(tmp_path / run, steps=steps, eval_every=0, ckpt_every=2)
        cfg.data.sampler = "per_domain"
        cfg.grads.target = "a"
        cfg.train.objective = "dreamprm"
        cfg.train.objective_hparams = {"weights": kind, "table_size": 64, "lr_p": 0.1}
        cfg.optim.schedule_steps = 4
        return cfg

    full = loop.train(cfg_for("full", 4), data=fake_data(cfg_for("full", 4)))
    loop.train(cfg_for("split", 2), data=fake_data(cfg_for("split", 2)))
    split = loop.train(cfg_for("split", 4), data=fake_data(cfg_for("split", 4)), resume=True)
    p_full, p_split = full.state.mix_state["logits"], split.state.mix_state["logits"]
    for a, b in zip(jax.tree.leaves((p_full, full.state.params)),
                    jax.tree.leaves((p_split, split.state.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if kind == "table":
        assert np.shape(p_full) == (64,)
        assert np.abs(np.asarray(p_full) - 1.0).max() > 1e-3      # the visited slots moved
