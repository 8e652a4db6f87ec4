"""Routing statistics of the MoE model (expert_routing, expert_dropped) and the dynamic MoE
data-mixing rule (mixjax.mixing.moe_dynamic) against plain numpy restatements."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import mixing
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.mixing import statistics


def numpy_update(w, load, eta, c, similarity="cos", criterion="mean"):
    """The rule restated (reference: Spico197/MoE-SFT src/callbacks.py), every domain present
    except those with no routed tokens, which keep their weight."""
    k = len(w)
    present = load.reshape(k, -1).sum(1) > 0
    idx = np.flatnonzero(present)
    rep = load.reshape(k, -1)[idx]
    rep = rep / rep.sum(1, keepdims=True)
    if similarity == "cos":
        unit = rep / np.linalg.norm(rep, axis=1, keepdims=True)
        pair = unit @ unit.T
    else:
        pair = np.linalg.norm(rep[:, None] - rep[None], axis=2)
    agg = getattr(pair, criterion)(axis=1)
    delta = 1 - agg if similarity == "cos" else agg
    alpha = np.log(w[idx]) + eta * delta
    alpha = np.exp(alpha - alpha.max())
    alpha /= alpha.sum()
    new = w.copy()
    new[idx] = w[idx].sum() * alpha
    new = (1 - c) * new + c / k
    return new / new.sum()


@pytest.mark.parametrize("similarity,criterion,absent", [("cos", "mean", None),
                                                         ("l2", "max", 2), ("cos", "min", 0)])
def test_update_equals_numpy_restatement(similarity, criterion, absent):
    rng = np.random.default_rng(0)
    k = 4
    w = rng.dirichlet(np.ones(k)).astype(np.float32)
    load = rng.integers(0, 20, (k, 2, 3)).astype(np.float32)
    if absent is not None:
        load[absent] = 0
    mixer = mixing.get("moe_dynamic", eta=3.0, smoothing=0.1, update_every=2,
                       similarity=similarity, criterion=criterion)
    state = mixer.init(k)
    state = {**state, "weights": jnp.asarray(w)}
    stats = {"expert_routing": jnp.asarray(load), "count": jnp.ones(k)}
    update = jax.jit(mixer.update)
    held = update(state, stats, jnp.asarray(0))        # step 1 of 2: not due
    np.testing.assert_array_equal(np.asarray(held["weights"]), w)
    new = update(state, stats, jnp.asarray(1))
    want = numpy_update(w.astype(np.float64), load.astype(np.float64), 3.0, 0.1, similarity,
                        criterion)
    np.testing.assert_allclose(np.asarray(new["weights"]), want, rtol=1e-5, atol=1e-7)
    if absent is not None:   # an absent domain keeps its weight before smoothing
        np.testing.assert_allclose(want[absent], 0.9 * w[absent] / 1.0 + 0.1 / k, rtol=1e-5)


@pytest.mark.parametrize("hp,msg", [({"similarity": "dot"}, "similarity"),
                                    ({"update_every": 0}, "update_every"),
                                    ({"smoothing": 2.0}, "smoothing")])
def test_bad_hparams(hp, msg):
    with pytest.raises(ValueError, match=msg):
        mixing.get("moe_dynamic", **hp)


class _RoutedBigram:
    """A bigram LM with an MoE model's ``routing`` hook (fixed per-token choices): the step's
    plumbing from ``apply.routing`` to the statistic and the mixer, without compiling the
    MoE transformer (whose routing is checked in tests/test_model_moe.py)."""

    def __call__(self, params, tokens):
        return params[tokens]

    def routing(self, params, tokens):
        e = 4
        onehot = jax.nn.one_hot(tokens % e, e)                       # [B,S,E]
        kept = jnp.stack([onehot.sum(1), (onehot * (tokens[..., None] > 8)).sum(1)])  # [2,B,E]
        return {"kept": kept, "dropped": jnp.stack([jnp.sum(tokens > 12, 1)] * 2
                                                   ).astype(jnp.float32)}


def test_train_step_reads_routing_of_the_model():
    apply, k = _RoutedBigram(), 3
    params = jax.random.normal(jax.random.PRNGKey(0), (16, 16))
    mixer = mixing.get("moe_dynamic", eta=5.0, smoothing=0.05, update_every=1)
    tx = optax.sgd(0.0)
    step = jax.jit(step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=k,
                                            pad_id=0, jit=False))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (6, 9), 1, 16)
    domain_id = jnp.asarray([0, 1, 2, 0, 1, 0], jnp.int32)
    batch = {"tokens": tokens, "domain_id": domain_id, "sampling_weights": jnp.full((k,), 1 / k)}
    state = state_lib.init_state(params, tx, mixer, k, 0)
    new_state, _ = step(state, batch)
    routing = jax.tree.map(np.asarray, apply.routing(params, tokens[:, :-1]))
    ids = np.asarray(domain_id)
    kept = np.stack([routing["kept"][:, ids == d].sum(1) for d in range(k)])      # [K,L,E]
    dropped = np.stack([routing["dropped"][:, ids == d].sum(1) for d in range(k)])
    # the statistics, through the registry, from the step's context
    ctx = type("Ctx", (), {"routing": routing, "domain_id": domain_id, "num_domains": k})()
    np.testing.assert_allclose(np.asarray(statistics.get("expert_routing").compute(ctx)), kept)
    np.testing.assert_allclose(np.asarray(statistics.get("expert_dropped").compute(ctx)),
                               dropped)
    want = numpy_update(np.full(k, 1 / k), kept.astype(np.float64), 5.0, 0.05)
    np.testing.assert_allclose(np.asarray(new_state.mix_state["weights"]), want, rtol=1e-5)
    assert not np.allclose(want, 1 / k)


def test_dense_model_is_refused_naming_model_kind():
    mixer = mixing.get("moe_dynamic")
    with pytest.raises(ValueError, match="model.kind='moe'"):
        step_lib.make_train_step(apply=lambda p, x: p[x], mixer=mixer, tx=optax.sgd(0.1),
                                 num_domains=2, pad_id=0)
