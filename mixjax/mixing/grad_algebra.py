"""Pytree algebra shared by the per-domain and the per-example gradient engines.

Stacks are pytrees whose leaves carry a leading axis (K domains or B sequences):
``stack_gram(A, B)[i, j] = <A_i, B_j>``, ``stack_dots(A, v)[i] = <A_i, v>``,
``weighted_sum(c, A) = sum_i c_i A_i``; ``tree_dot(a, b) = <a, b>``. Inner products are
accumulated in f32 at ``Precision.HIGHEST`` so TPUs do not round them to bf16.
``param_mask``/``split_leaves``/``merge_leaves`` restrict statistics to the leaves a
``grads.param_filter`` regex selects.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
# token_loss_fn(params, batch) -> (token_loss f32[B,S], token_mask f32[B,S]): all the engines see.
TokenLossFn = Callable[[PyTree, Mapping[str, Array]], tuple[Array, Array]]
HIGHEST = jax.lax.Precision.HIGHEST
# Keys of a batch that are not per-sequence arrays (never regrouped by domain or row).
NOT_PER_EXAMPLE = ("domain_counts",)


def param_mask(params: PyTree, pattern: str | None) -> PyTree:
    """A pytree of bools: which leaves the statistics use (regex search on the path)."""
    if pattern is None:
        return jax.tree.map(lambda _: True, params)
    rx = re.compile(pattern)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: bool(rx.search(jax.tree_util.keystr(path))), params)
    if not any(jax.tree.leaves(mask)):
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        raise ValueError(f"grads.param_filter {pattern!r} matches no parameter; paths look like "
                         f"{paths[:4]}")
    return mask


def split_leaves(params: PyTree, mask: PyTree) -> tuple[PyTree, PyTree]:
    """(selected, rest): ``params`` with the unmasked (masked) leaves set to None."""
    sel = jax.tree.map(lambda p, m: p if m else None, params, mask)
    rest = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return sel, rest


def merge_leaves(sel: PyTree, rest: PyTree) -> PyTree:
    """The inverse of :func:`split_leaves`."""
    return jax.tree.map(lambda a, b: b if a is None else a, sel, rest,
                        is_leaf=lambda x: x is None)


def tree_dot(a: PyTree, b: PyTree) -> Array:
    """<a, b> summed over leaves, f32."""
    leaves = jax.tree.leaves(jax.tree.map(
        lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32), precision=HIGHEST), a, b))
    return sum(leaves, jnp.zeros((), jnp.float32))


def stack_gram(stack_a: PyTree, stack_b: PyTree) -> Array:
    """[Ka, Kb] inner products of two leading-axis stacks of pytrees."""
    def one(x, y):
        return jnp.einsum("kp,jp->kj", x.reshape(x.shape[0], -1).astype(jnp.float32),
                          y.reshape(y.shape[0], -1).astype(jnp.float32), precision=HIGHEST)
    return sum(jax.tree.leaves(jax.tree.map(one, stack_a, stack_b)))


def stack_dots(stack: PyTree, vec: PyTree) -> Array:
    """[K] inner products of a stack of pytrees with one pytree."""
    def one(x, y):
        return jnp.einsum("kp,p->k", x.reshape(x.shape[0], -1).astype(jnp.float32),
                          y.reshape(-1).astype(jnp.float32), precision=HIGHEST)
    return sum(jax.tree.leaves(jax.tree.map(one, stack, vec)))


def weighted_sum(coeffs: Array, stack: PyTree) -> PyTree:
    """``sum_i c_i stack_i`` leaf by leaf, in the leaves' dtype."""
    return jax.tree.map(
        lambda g: jnp.einsum("k,k...->...", coeffs.astype(jnp.float32), g.astype(jnp.float32),
                             precision=HIGHEST).astype(g.dtype), stack)


def per_example(batch: Mapping[str, Array]) -> dict[str, Array]:
    """The per-sequence arrays of a batch (what the token loss function reads)."""
    b = batch["domain_id"].shape[0]
    return {k: v for k, v in batch.items()
            if k not in NOT_PER_EXAMPLE and not k.startswith("target_")
            and getattr(v, "ndim", 0) >= 1 and v.shape[0] == b}
