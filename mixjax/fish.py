"""Fish: gradient matching across domains by a first-order meta update.

Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022,
arXiv 2104.09937. Fish approximates the inter-domain gradient matching
objective (IDGM)::

    min_theta  mean_d L_d(theta) - gamma * 2/(S(S-1)) * sum_{i<j} <grad L_i, grad L_j>

by a Reptile-like step. One *meta step*, following the official code
(``YugeTen/fish: src/utils.py fish_step``; dg-algorithms.md section 4)::

    theta~ <- theta                       (clone; the inner optimiser state is carried
                                           over from the previous meta step)
    for d in the M domains, in a random order:
        theta~ <- inner_opt_step(theta~, grad L_d(theta~))
    theta <- theta + (meta_lr / M) * (theta~ - theta)

``divide_by_meta_steps=False`` gives DomainBed's variant ``theta += meta_lr *
(theta~ - theta)`` (its default meta_lr 0.5). The official runs start with
``pretrain_iters`` plain ERM steps; that schedule belongs to the caller.

Everything is pure and jittable and knows models only through a loss
function, so both the LM side (:func:`fish_lm_step`, text domains of one
stratified batch) and the DG side (``mixjax.dg``, image domains) use it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import grads as G

PyTree = Any


def fish_step(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, inner_opt_state: PyTree,
              inner_tx: optax.GradientTransformation, domain_batches: Any, *, meta_lr: float,
              divide_by_meta_steps: bool = True):
    """One Fish meta step over ``domain_batches`` (a pytree with leading axis M, one per domain).

    ``loss_fn(params, batch) -> scalar``. The inner loop visits the domains in
    the order of the leading axis (shuffle before calling). Returns
    ``(new_params, new_inner_opt_state, inner_losses f32[M])``.
    """
    m = jax.tree.leaves(domain_batches)[0].shape[0]

    def inner(carry, b):
        p, o = carry
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        upd, o = inner_tx.update(g, o, p)
        return (optax.apply_updates(p, upd), o), loss

    (p_tilde, inner_opt_state), losses = jax.lax.scan(inner, (params, inner_opt_state),
                                                      domain_batches)
    scale = meta_lr / m if divide_by_meta_steps else meta_lr
    new_params = jax.tree.map(lambda t, s: (t + scale * (s - t)).astype(t.dtype), params, p_tilde)
    return new_params, inner_opt_state, losses


def fish_lm_step(token_loss_fn: G.TokenLossFn, params: PyTree, inner_opt_state: PyTree,
                 inner_tx: optax.GradientTransformation, batch: Mapping[str, jax.Array],
                 rng: jax.Array, *, num_domains: int, meta_lr: float,
                 divide_by_meta_steps: bool = True):
    """Fish on text domains: the K domains of one stratified batch, in a random order.

    The batch must hold exactly B/K sequences per domain (``grads.check_stratified``);
    each inner step uses one domain's mean token loss.
    """
    sub = G.stratify(batch, num_domains)                       # [K, B/K, ...]
    order = jax.random.permutation(rng, num_domains)
    sub = jax.tree.map(lambda v: v[order], sub)

    def loss_fn(p, one):
        tl, tm = token_loss_fn(p, one)
        tm = tm.astype(jnp.float32)
        return (tl.astype(jnp.float32) * tm).sum() / jnp.maximum(tm.sum(), 1.0)

    new_params, inner_opt_state, losses = fish_step(
        loss_fn, params, inner_opt_state, inner_tx, sub, meta_lr=meta_lr,
        divide_by_meta_steps=divide_by_meta_steps)
    # Report the inner losses in domain order.
    domain_losses = jnp.zeros((num_domains,), jnp.float32).at[order].set(losses)
    return new_params, inner_opt_state, domain_losses
