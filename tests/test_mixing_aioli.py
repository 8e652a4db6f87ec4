"""Aioli against a numpy statement of HazyResearch/aioli trainer/aioli_trainer.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing

DOMS = ("a", "b", "c")


def _reference(mixer, losses_at, total, k, prior, t0, u, lp_rounds, lp_steps, f, eta, ema,
               normalize, diagonal):
    """Weights per batch 0..total-1 as the reference trains them (one process, exact)."""
    used = [prior] * t0
    weights_init = np.ones(k)
    counter, i = t0, 0
    ema_graph, weights = None, None
    p_probe = lp_rounds * k * lp_steps
    while counter < total:
        loss_prev = losses_at(counter)                           # evaluated at round start
        graph = np.zeros((k, k))
        order = np.asarray(mixer.order(k, i))
        for j in order:
            w = np.ones(k) * (1 - f) / (k - 1)
            w[j] = f
            used += [w] * lp_steps
            counter += lp_steps
            new = losses_at(counter)
            graph[:, j] += loss_prev - new
            loss_prev = new
        graph /= lp_rounds
        if f != 1 and not diagonal:
            wm = np.stack([np.where(np.arange(k) == r, f, (1 - f) / (k - 1)) for r in range(k)])
            graph = np.stack([np.linalg.solve(wm, row) for row in graph])
        elif f != 1:
            graph = np.diag(np.diagonal(graph) / f)
        if normalize:
            if graph.min() < 0:
                graph = graph - graph.min()
            graph = graph / graph.sum()
        if ema is not None:
            ema_graph = graph if i == 0 else (1 - ema) * graph + ema * ema_graph
            weights = weights_init * np.exp(eta * ema_graph.sum(axis=0))
        else:
            weights = (weights_init if i == 0 else weights) * np.exp(eta * graph.sum(axis=0))
        used += [weights / weights.sum()] * (u - p_probe)
        counter += u - p_probe
        i += 1
    return np.stack(used[:total])


@pytest.mark.parametrize("hp", [
    dict(lp_rounds=1, lp_steps=2, one_hot_factor=1.0, ema=None, normalize_A=False,
         diagonal=False, prior_steps=0, prior=None),
    dict(lp_rounds=2, lp_steps=1, one_hot_factor=0.5, ema=0.5, normalize_A=True,
         diagonal=False, prior_steps=3, prior={"a": 0.2, "b": 0.3, "c": 0.5}),
    dict(lp_rounds=1, lp_steps=1, one_hot_factor=0.6, ema=None, normalize_A=False,
         diagonal=True, prior_steps=0, prior=None),
])
def test_aioli_matches_reference(hp):
    k, u, eta, total = 3, 9, 0.7, 30
    m = mixing.build("aioli", {"eta": eta, "update_steps": u, "seed": 4, **hp}, domains=DOMS)
    rng = np.random.default_rng(0)
    table = np.cumsum(rng.uniform(-0.05, 0.3, size=(total + 3 * u, k)), axis=0)
    losses_at = lambda done: (5.0 - table[done]).astype(np.float32)  # noqa: E731
    prior = m.prior_vector(k)
    want = _reference(m, losses_at, total, k, prior, hp["prior_steps"], u, hp["lp_rounds"],
                      hp["lp_steps"], hp["one_hot_factor"], eta, hp["ema"], hp["normalize_A"],
                      hp["diagonal"])
    state = m.init(k)
    got = [np.asarray(state["weights"])]
    update = jax.jit(m.update)
    eval_loss = losses_at(0)
    for s in range(total - 1):
        if s > 0 and m.wants_eval(s):
            eval_loss = losses_at(s)
        state = update(state, {"eval_loss": jnp.asarray(eval_loss)}, jnp.int32(s))
        got.append(np.asarray(state["weights"]))
    got = np.stack(got)
    # the first batch after each round's probes still uses the previous p (module docstring)
    p_probe = hp["lp_rounds"] * k * hp["lp_steps"]
    late = [hp["prior_steps"] + r * u + p_probe for r in range(total // u + 1)]
    late = [n for n in late if n < total]
    keep = np.setdiff1d(np.arange(total), late)
    np.testing.assert_allclose(got[keep], want[keep], rtol=2e-5, atol=1e-6)
    for r, n in enumerate(late):
        prev = np.full(k, 1 / k) if r == 0 else want[n - p_probe - 1]   # previous p
        np.testing.assert_allclose(got[n], prev, rtol=2e-5, atol=1e-6)
    assert not np.allclose(want[-1], want[late[0] + 1])      # later rounds moved the mixture


def test_aioli_bad_input_is_clear():
    with pytest.raises(ValueError, match=r"probe budget .* = 2 \* 3 \* 5 = 30 steps .* "
                                         r"update_steps = 20"):
        mixing.build("aioli", {"lp_rounds": 2, "lp_steps": 5, "update_steps": 20},
                     domains=DOMS)
    with pytest.raises(ValueError, match="prior_steps"):
        mixing.build("aioli", {"prior": {"a": 1.0}}, domains=DOMS)
    with pytest.raises(ValueError, match=r"unknown domains \['z'\]"):
        mixing.build("aioli", {"prior": {"z": 1.0}, "prior_steps": 5}, domains=DOMS)
