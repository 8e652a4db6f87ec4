"""Per-example gradients: each sequence of the batch its own objective.

Per example (B sequences; :func:`example_grads`): with ``L_b = sum_t m_bt l_bt /
max(n_b, 1)`` the mean token loss of sequence b and ``g_b = grad L_b``,

* ``example_gram`` f32[B,B]  ``E_ab = <g_a, g_b>``

and ``combine_examples(c)`` = ``sum_b c_b g_b`` (c f32[B]), the model gradient of a
mixer with ``model_gradient = "example_coeffs"`` (an aggregator over sequences:
UPGrad/PCGrad over examples, docs/extending.md). The B per-sequence gradients are
materialised by one ``vmap`` of ``grad`` over the rows (memory B x params, or B x the
``param_filter``'s leaves), whatever ``strategy`` says: the strategies are about domains.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from mixjax.mixing.grad_algebra import (Array, PyTree, TokenLossFn, merge_leaves, param_mask,
                                        per_example, split_leaves, stack_gram, weighted_sum)

# The per-example statistics (axis 0 is the batch axis B) this module computes.
EXAMPLE_STATS = frozenset({"example_gram"})


class ExampleGrads(NamedTuple):
    """Per-sequence statistics: ``loss`` f32[B] (L_b), ``gram`` f32[B,B] (<g_a, g_b>) and
    ``combine(c f32[B]) = sum_b c_b g_b`` over all parameters."""

    loss: Array
    gram: Array
    combine: Callable[[Array], PyTree]


def example_loss_vector(token_loss_fn: TokenLossFn, params: PyTree,
                        batch: Mapping[str, Array]) -> Array:
    """``L`` f32[B]: ``L_b = sum_t m_bt l_bt / max(n_b, 1)`` (0 for an all-pad sequence)."""
    tl, tm = token_loss_fn(params, per_example(batch))
    tl, tm = tl.astype(jnp.float32), tm.astype(jnp.float32)
    return (tl * tm).sum(axis=1) / jnp.maximum(tm.sum(axis=1), 1.0)


def example_grads(token_loss_fn: TokenLossFn, params: PyTree, batch: Mapping[str, Array], *,
                  param_filter: str | None = None) -> ExampleGrads:
    """The B per-sequence gradients ``g_b = grad L_b`` (one ``vmap`` of ``grad`` over rows,
    each row a batch of one) and their Gram matrix, restricted to ``param_filter``'s leaves;
    ``combine`` covers all parameters (an extra weighted backward when filtered)."""
    mask = param_mask(params, param_filter)
    sel, rest = split_leaves(params, mask)
    ex = per_example(batch)

    def one(s, row):
        return example_loss_vector(token_loss_fn, merge_leaves(s, rest),
                                   jax.tree.map(lambda v: v[None], row))[0]

    losses, g = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0))(sel, ex)
    gram = stack_gram(g, g)

    def backward(c):   # grad of sum_b c_b L_b: one weighted backward over all parameters
        _, pull = jax.vjp(lambda p: example_loss_vector(token_loss_fn, p, batch), params)
        return pull(c.astype(jnp.float32))[0]

    combine = (lambda c: weighted_sum(c, g)) if param_filter is None else backward
    return ExampleGrads(losses, gram, combine)


def direct_example_grads(token_loss_fn: TokenLossFn, params: PyTree,
                         batch: Mapping[str, Array]) -> list[PyTree]:
    """Reference: one ``jax.grad`` per sequence of the full batch (tests)."""
    b = batch["domain_id"].shape[0]
    return [jax.grad(lambda p, i=i: example_loss_vector(token_loss_fn, p, batch)[i])(params)
            for i in range(b)]
