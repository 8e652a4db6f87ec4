"""Every DG algorithm: a few jit-compiled steps on a tiny synthetic task stay finite and learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

K, B = 3, 8
NET = NetSpec(input_shape=(4, 4, 1), num_classes=2, featurizer="mlp", mlp_width=16)
# algorithms that need convolutional feature maps
CNN_NET = NetSpec(input_shape=(4, 4, 1), num_classes=2, featurizer="cnn", cnn_widths=(16, 16, 16, 16))
NETS = {"ccfp": CNN_NET, "ttss": CNN_NET, "mmld": CNN_NET}


def tiny_batches():
    rng = np.random.default_rng(0)
    ys = rng.integers(0, 2, (K, B)).astype(np.int32)
    xs = rng.normal(size=(K, B, 4, 4, 1)).astype(np.float32)
    xs[..., 0, 0, 0] += 3.0 * (2 * ys - 1)  # a learnable signal
    return jnp.asarray(xs), jnp.asarray(ys)


def build(name, **override):
    return build_algorithm(name, NETS.get(name, NET), num_envs=K, batch_size=B, mlp_width=16, **override)


# DomainBed's SANDMask default tau = 1 masks every coordinate (tanh(k (a - 1) / v) <= 0 is
# clipped to 0), so its default run does not move; test_dg_penalties_domainbed checks that.
LEARNING_OVERRIDES = {"sandmask": {"tau": 0.5}, "mode": {"mode_steps": 2}}   # mode: fewer ascent steps (test time)


@pytest.mark.parametrize("name", sorted(A.ALGORITHMS))
def test_algorithm_steps_are_finite_and_reduce_loss(name):
    alg, hp = build(name, **LEARNING_OVERRIDES.get(name, {}))
    xs, ys = tiny_batches()
    # init runs eagerly (its ops are compiled once per worker, not once per algorithm) and
    # is traced abstractly, which catches what jit would reject at a fraction of a compile.
    init = alg.init
    state = init(jax.random.key(0), hp)
    traced = jax.eval_shape(alg.init, jax.random.key(0), hp)
    assert jax.tree.structure(traced) == jax.tree.structure(state)
    assert all(a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(jax.tree.leaves(traced), jax.tree.leaves(state))), name
    update = jax.jit(alg.update)
    for i in range(4):
        state, metrics = update(hp, state, xs, ys, jax.random.key(i))
        assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), (name, i, metrics)
    assert int(state["step"]) == 4
    logits = alg.predict(state, xs[0])
    assert logits.shape == (B, 2) and np.isfinite(np.asarray(logits)).all()
    ce = lambda s: float(optax_ce(alg.predict(s, xs.reshape(K * B, 4, 4, 1)), ys.reshape(-1)))  # noqa: E731
    assert ce(state) < ce(init(jax.random.key(0), hp)), f"{name}: 4 steps did not lower the training CE"


def optax_ce(logits, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()


def test_vmapped_update_equals_separate_updates():
    """Runs vmapped over hyperparameters get exactly what they would get alone."""
    alg, hp = build("irm", irm_penalty_anneal_iters=1)
    xs, ys = tiny_batches()
    hps = {k: jnp.stack([v, v * 2]) for k, v in hp.items()}
    keys = jax.random.split(jax.random.key(1), 2)
    states = jax.jit(jax.vmap(alg.init))(keys, hps)
    upd = jax.jit(jax.vmap(alg.update, in_axes=(0, 0, None, None, None)))
    for i in range(2):
        states, m = upd(hps, states, xs, ys, jax.random.key(i))
    init1, upd1 = jax.jit(alg.init), jax.jit(alg.update)
    for r in range(2):
        hp_r = {k: v[r] for k, v in hps.items()}
        s = init1(keys[r], hp_r)
        for i in range(2):
            s, m1 = upd1(hp_r, s, xs, ys, jax.random.key(i))
        for a, b in zip(jax.tree.leaves(s["params"]), jax.tree.leaves(jax.tree.map(lambda v: v[r], states["params"]))):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_irm_anneal_switches_weight_and_resets_adam():
    alg, hp = build("irm", irm_penalty_anneal_iters=2, irm_lambda=100.0)
    assert float(alg.penalty_weight(hp, jnp.int32(1))) == 1.0
    assert float(alg.penalty_weight(hp, jnp.int32(2))) == 100.0
    xs, ys = tiny_batches()
    state = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    counts = []
    for i in range(3):
        state, _ = update(hp, state, xs, ys, jax.random.key(i))
        counts.append(int(state["opt"][1].count))  # scale_by_adam's step count
    assert counts == [1, 2, 1], counts  # re-initialised at step == anneal_iters, then stepped once


def test_groupdro_q_tracks_the_worst_env():
    alg, hp = build("groupdro", groupdro_eta=1.0)
    xs, ys = tiny_batches()
    ys = ys.at[2].set(1 - ys[2])  # env 2's labels flipped: it cannot agree with envs 0 and 1
    state = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    for i in range(5):
        state, _ = update(hp, state, xs, ys, jax.random.key(i))
    q = np.asarray(state["q"])
    assert q.sum() == pytest.approx(1.0, rel=1e-5) and q.argmax() == 2, q


def test_dann_alternates_discriminator_and_generator_steps():
    alg, hp = build("dann", d_steps_per_g_step=1)
    xs, ys = tiny_batches()
    s0 = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    s1, _ = update(hp, s0, xs, ys, jax.random.key(0))  # update_count 1: 1 % 2 < 1 is false -> generator
    s2, _ = update(hp, s1, xs, ys, jax.random.key(1))  # update_count 2: 2 % 2 < 1 -> discriminator
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert not same(s0["params"], s1["params"]) and same(s0["disc"], s1["disc"])
    assert same(s1["params"], s2["params"]) and not same(s1["disc"], s2["disc"])


def test_hparams_defaults_and_deterministic_random_draws():
    space = A.get("irm").hparam_space(True)
    assert H.draw(space, 0, 0) == {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "irm_lambda": 1e2,
                                   "irm_penalty_anneal_iters": 500}
    a, b = H.draw(space, 3, 1), H.draw(space, 3, 1)
    assert a == b and a != H.draw(space, 3, 2)
    assert 10**-4.5 <= a["lr"] <= 10**-2.5 and 8 <= a["batch_size"] <= 512
    # per-name RandomState: lr is the same draw for every algorithm
    assert H.draw(A.get("erm").hparam_space(True), 3, 1)["lr"] == a["lr"]
