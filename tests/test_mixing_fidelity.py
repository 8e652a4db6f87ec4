"""Update rules against numpy statements of the reference code, step by step.

DoGE's average (Olivia-fsm/DoGE src/trainer.py: running sum and count start at
0), DoReMi's average and non-uniform alpha_0 (sangmichaelxie/doremi
doremi/trainer.py), ODM's 1-based iteration counter
(alon-albalak/online-data-mixing megatron/training.py, Exp3 updater).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing


def test_doge_average_is_the_mean_of_updated_alphas_only():
    rng = np.random.default_rng(1)
    k, mu, lr = 3, 0.05, 1e-2
    mixer = mixing.get("doge", mu=mu, max_grad_norm=0.0)
    assert not mixer.average_includes_initial
    state = mixer.init(k)
    np.testing.assert_allclose(mixer.average(state), np.full(k, 1 / k))  # nothing counted yet
    alpha = np.full(k, 1 / k)
    avg_sum, avg_count = np.zeros(k), 0            # the reference's avg_dw and its count
    for step in range(4):
        g = rng.normal(size=(k, 6))
        stats = {"gram": jnp.asarray(g @ g.T, jnp.float32), "count": jnp.ones(k),
                 "lr": jnp.asarray(lr, jnp.float32)}
        state = mixer.update(state, stats, jnp.int32(step))
        w = (g @ g.T).sum(1) - np.diag(g @ g.T)
        s = np.clip(lr * w / (np.linalg.norm(g, axis=1).mean() + 1e-6), 0.0, 5 * lr)
        alpha = np.exp(np.log(alpha) + s / mu)
        alpha /= alpha.sum()
        avg_sum, avg_count = avg_sum + alpha, avg_count + 1
        np.testing.assert_allclose(state["weights"], alpha, rtol=1e-5)
        np.testing.assert_allclose(mixer.average(state), avg_sum / avg_count, rtol=1e-5)


def _doremi_reference(alpha0, excess, dom, k, eta, eps, steps):
    """doremi/trainer.py update_domain_weights; the average includes alpha_0."""
    alpha, scores = alpha0.copy(), np.zeros(k)
    history = [alpha0.copy()]
    for _ in range(steps):
        for d in range(k):
            if np.any(dom == d):
                scores[d] = excess[dom == d].mean()
        logw = np.log(alpha) + eta * scores
        alpha = np.exp(logw - logw.max())
        alpha /= alpha.sum()
        alpha = (1 - eps) * alpha + eps / k
        history.append(alpha)
    return alpha, np.mean(history, axis=0)


def test_doremi_non_uniform_initial_alpha_and_average_with_alpha0():
    k, eta, eps = 3, 0.5, 1e-3
    mixer = mixing.build("doremi", {"eta": eta, "smoothing": eps,
                                    "initial_weights": {"c": 2.0, "a": 1.0, "b": 1.0}},
                         domains=("a", "b", "c"))
    assert mixer.average_includes_initial
    alpha0 = np.array([0.25, 0.25, 0.5])
    state = mixer.init(k)
    np.testing.assert_allclose(state["weights"], alpha0, rtol=1e-7)
    tl = np.array([[3.0, 2.0], [1.0, 1.5], [2.5, 2.5], [4.0, 1.0]], np.float32)
    rl = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [1.0, 1.0]], np.float32)
    dom = np.array([0, 1, 2, 2], np.int32)
    stats = {"token_loss": jnp.asarray(tl), "ref_token_loss": jnp.asarray(rl),
             "token_mask": jnp.ones((4, 2)), "domain_id": jnp.asarray(dom)}
    for step in range(3):
        state = jax.jit(mixer.update)(state, stats, jnp.int32(step))
    per_seq = np.maximum(tl - rl, 0).sum(1)
    excess = np.array([per_seq[dom == d].sum() / (2 * (dom == d).sum()) for d in range(k)])
    want, want_avg = _doremi_reference(alpha0, excess[dom], dom, k, eta, eps, 3)
    np.testing.assert_allclose(state["weights"], want, rtol=1e-5)
    np.testing.assert_allclose(mixer.average(state), want_avg, rtol=1e-5)
    # a sequence in domain order works too; bad input names the culprit
    seq = mixing.get("doremi", initial_weights=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(seq.init(3)["weights"], alpha0, rtol=1e-7)
    with pytest.raises(ValueError, match=r"missing domains \['c'\]"):
        mixing.build("doremi", {"initial_weights": {"a": 1.0, "b": 1.0}}, domains=("a", "b", "c"))
    with pytest.raises(ValueError, match="initial_weights"):
        mixing.build("doremi", {"initial_weights": (1.0, -1.0, 1.0)}, domains=("a", "b", "c"))


def _odm_reference(losses, k, warmup, update_every, steps):
    """The reference loop: iteration = 1, 2, ...; EXP3 with eps_{t-1} in the softmax.

    One domain per batch in the reference; here every domain is present with
    presence probability pi (draws_per_batch=1), the same importance weight.
    """
    pi = np.full(k, 1 / k)
    reward = np.zeros(k)
    prev_eps = 1 / k
    out = []
    for iteration in range(1, steps + 1):
        if iteration > warmup and iteration % update_every == 0:
            reward = reward + 0.1 * losses / pi
            eps = min(1 / k, math.sqrt(math.log(k) / (k * iteration)))
            w = np.exp(prev_eps * reward - np.max(prev_eps * reward))
            w = (1 - k * eps) * w / w.sum() + eps
            pi, prev_eps = w / w.sum(), eps
        out.append(pi.copy())
    return out


def test_odm_uses_the_one_based_iteration():
    k = 3
    losses = np.array([1.0, 2.0, 3.0])
    mixer = mixing.get("odm", warmup_steps=2, update_every=2, draws_per_batch=1)
    state = mixer.init(k)
    want = _odm_reference(losses, k, 2, 2, 7)
    stats = {"loss": jnp.asarray(losses, jnp.float32), "count": jnp.ones(k),
             "domain_id": jnp.arange(k, dtype=jnp.int32)}
    update = jax.jit(mixer.update)
    for step in range(7):
        stats["sampling_weights"] = state["weights"]
        state = update(state, stats, jnp.int32(step))
        np.testing.assert_allclose(state["weights"], want[step], rtol=1e-5, err_msg=f"{step}")
    # the first update is at iteration 4 (> warm-up 2, even): after the 4th step (index 3)
    np.testing.assert_allclose(want[2], np.full(k, 1 / k))
    assert not np.allclose(want[3], np.full(k, 1 / k))
