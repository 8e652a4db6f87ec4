"""Chunked cross-entropy (``model.loss_chunk``) equals the full-logits loss: per-token
losses, gradients, and a whole train step through the vmapped gradient engine (DGA's
grad_dot), all in fp32."""

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import mixing
from mixjax.mixing import grads
from mixjax.models import transformer as T
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from train_fakes import PAD, VOCAB, domain_sequence

K, S = 3, 15      # S = 15 positions: not a multiple of the chunk, so padding is exercised


@functools.cache
def _init(tie):
    cfg = T.TransformerConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2,
                              tie_embeddings=tie, loss_chunk=4)
    return T.init(cfg, seed=0)[:2]


def model(chunk, tie=True):
    """``(apply, params)``; the apply with ``loss_chunk = chunk`` (one init per head kind)."""
    apply, params = _init(tie)
    apply = copy.copy(apply)
    apply.loss_chunk = chunk
    return apply, params


def batch(domain_id=(0, 0, 1, 1, 2, 2)):
    tokens = np.stack([domain_sequence(d, i, S + 1) for i, d in enumerate(domain_id)])
    tokens[1, -4:] = PAD                                   # a padded tail
    target = np.stack([domain_sequence(0, 50 + i, S + 1) for i in range(2)])
    return {"tokens": jnp.asarray(tokens, jnp.int32),
            "domain_id": jnp.asarray(domain_id, jnp.int32),
            "sampling_weights": jnp.full((K,), 1.0 / K, jnp.float32),
            "target_tokens": jnp.asarray(target, jnp.int32)}


def test_token_losses_and_gradients_equal_the_full_logits_path():
    tie = False          # the untied head (w = unembed^T); the DGA test below runs the tied one
    apply0, params = model(0, tie)
    apply4, _ = model(4, tie)
    tokens = batch()["tokens"]
    cot = jax.random.uniform(jax.random.key(1), (tokens.shape[0], S))

    def run(apply):
        def f(p):
            tl, tm = step_lib.token_losses(apply, p, tokens, PAD)
            return jnp.sum(tl * cot), (tl, tm)
        return jax.jit(jax.grad(f, has_aux=True))(params)

    g0, (tl0, tm0) = run(apply0)
    g4, (tl4, tm4) = run(apply4)
    np.testing.assert_array_equal(np.asarray(tm0), np.asarray(tm4))
    assert float(jnp.min(tl0[tm0 > 0])) > 0
    np.testing.assert_allclose(np.asarray(tl4), np.asarray(tl0), atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def _shapes(jaxpr, out=None):
    """Shapes of every value a jaxpr (and its sub-jaxprs: scan, checkpoint, ...) creates."""
    out = set() if out is None else out
    for eqn in jaxpr.eqns:
        out.update(tuple(v.aval.shape) for v in eqn.outvars)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _shapes(inner, out)
    return out


def test_chunked_cross_entropy_never_builds_full_logits():
    """No [B, >=S, V] array in the forward or backward of the chunked loss; the unchunked
    loss has one (so the check can see it)."""
    tokens = batch()["tokens"]
    b = tokens.shape[0]

    def grad_shapes(chunk):
        apply, params = model(chunk)
        f = lambda p: jnp.sum(step_lib.token_losses(apply, p, tokens, PAD)[0])  # noqa: E731
        return _shapes(jax.make_jaxpr(jax.grad(f))(params).jaxpr)

    def full(shapes):
        return any(len(s) == 3 and s[0] == b and s[1] >= S and s[2] == VOCAB for s in shapes)

    chunked = grad_shapes(4)
    assert (b, 4, VOCAB) in chunked and not full(chunked)
    assert full(grad_shapes(0))


def test_dga_step_through_the_vmap_engine_is_unchanged():
    """One DGA step (grad_dot from the stratified vmap engine): same statistics, weights
    and new parameters with and without chunking."""
    out = []
    for chunk in (0, 4):
        apply, params = model(chunk)
        mixer = mixing.get("dga")
        tx = optax.sgd(0.5)
        fn = step_lib.make_train_step(
            apply=apply, mixer=mixer, tx=tx, num_domains=K, pad_id=PAD,
            grad_stats=grads.make_grad_stats(grads.GradConfig(strategy="vmap"), K),
            donate=False)
        state = state_lib.init_state(params, tx, mixer, K, seed=0)
        new, metrics = fn(state, batch())
        out.append((new, metrics))
    (s0, m0), (s4, m4) = out
    np.testing.assert_allclose(np.asarray(m4["domain_loss"]), np.asarray(m0["domain_loss"]),
                               atol=1e-5, rtol=1e-5)
    for key in s0.mix_state:
        np.testing.assert_allclose(np.asarray(s4.mix_state[key]), np.asarray(s0.mix_state[key]),
                                   atol=1e-5, rtol=1e-5, err_msg=key)
    assert not np.allclose(np.asarray(s0.mix_state["weights"]), 1.0 / K)  # the rule moved
    for a, b in zip(jax.tree.leaves(s4.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_negative_loss_chunk_is_rejected():
    with pytest.raises(ValueError, match="model.loss_chunk"):
        dataclasses.replace(T.TransformerConfig(vocab_size=8), loss_chunk=-1)
