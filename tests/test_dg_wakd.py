"""WAKD (mixjax/dg/algorithms/wakd.py): the distillation loss, its gradient, the teacher's ERM
step and the student's weight average, each against a plain-numpy statement."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg.algorithms.wakd import distill_loss
from mixjax.dg.networks import NetSpec

K, B = 2, 4
NET = NetSpec(input_shape=(2, 2, 1), num_classes=3, featurizer="mlp", mlp_width=8)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_distill_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)) * 2, rng.normal(size=(5, 3)) * 2
    y = rng.integers(0, 3, 5)
    temp, w = 3.0, 0.7
    ce = -np_log_softmax(s)[np.arange(5), y].mean()
    log_p, log_q = np_log_softmax(t / temp), np_log_softmax(s / temp)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    loss, kl_j = distill_loss(jnp.float32(s), jnp.float32(t), jnp.int32(y), temp, w)
    np.testing.assert_allclose(float(kl_j), kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce + w * temp**2 * kl, rtol=1e-5)
    # d/ds: (softmax(s) - onehot(y)) / N + w * T * (softmax(s/T) - softmax(t/T)) / N; none to the teacher
    gs, gt = jax.grad(lambda a, b: distill_loss(a, b, jnp.int32(y), temp, w)[0], argnums=(0, 1))(
        jnp.float32(s), jnp.float32(t))
    want = (np.exp(np_log_softmax(s)) - np.eye(3)[y]) / 5 + w * temp * (np.exp(log_q) - np.exp(log_p)) / 5
    np.testing.assert_allclose(np.asarray(gs), want, rtol=1e-4, atol=1e-6)
    assert not np.asarray(gt).any()


def test_teacher_steps_as_erm_and_student_average_is_uniform():
    """Teacher: ERM's step. Student: ERM's step before wakd_kd_start, then not. Average: uniform."""
    cls = A.get("wakd")
    hp = H.draw(cls.hparam_space(True), 0, 0)
    hp.update(batch_size=B, mlp_width=8, wakd_avg_start=2, wakd_kd_start=2)
    static, traced = H.split_static(hp)
    alg = cls(net=NET, num_envs=K, static=static)
    hp = {k: jnp.float32(v) for k, v in traced.items()}
    erm = A.get("erm")(net=NET, num_envs=K, static=static)
    rng = np.random.default_rng(1)
    xs = jnp.float32(rng.normal(size=(K, B, 2, 2, 1)))
    ys = jnp.int32(rng.integers(0, 3, (K, B)))
    state = alg.init(jax.random.key(0), hp)
    update = jax.jit(alg.update)
    ref = {"params": state["teacher"], "opt": state["opt_t"], "step": state["step"]}
    ref_s = {"params": state["params"], "opt": state["opt"], "step": state["step"]}
    erm_update = jax.jit(erm.update)
    history = []
    for i in range(4):
        state, metrics = update(hp, state, xs, ys, jax.random.key(i))
        ref, _ = erm_update(hp, ref, xs, ys, jax.random.key(i))
        ref_s, _ = erm_update(hp, ref_s, xs, ys, jax.random.key(i))
        same_as_erm = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in
                          zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_s["params"])))
        assert same_as_erm == (i < 2), i  # distillation from update 2 on
        history.append([np.asarray(p) for p in jax.tree.leaves(state["params"])])
        # numpy statement: w_avg = w_t before update start - 1, then the mean of w_{start-2} .. w_t
        first = 0 if i + 1 >= 2 else i
        want = [np.mean([h[j] for h in history[first:]], axis=0) for j in range(len(history[0]))]
        for a, b in zip(jax.tree.leaves(state["avg"]), want):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(state["teacher"]), jax.tree.leaves(ref["params"])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(metrics["kl"]) > 0
    x = xs[0]
    np.testing.assert_allclose(np.asarray(alg.predict(state, x)), np.asarray(alg.logits(state["avg"], x)))
    assert not np.allclose(np.asarray(alg.predict(state, x)), np.asarray(alg.logits(state["params"], x)))
