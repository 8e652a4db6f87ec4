"""Placing batches on a mesh and jitting the sharded step.

``shard_batch`` splits per-sequence arrays over the mesh's batch axes (the ``batch`` rule)
and replicates per-batch values; ``jit_sharded_step`` jits a step whose state keeps its
shardings in and out and whose activations follow the logical rules
(:mod:`mixjax.parallel.activations`); ``replicate_value`` / ``replicated_outputs`` give
values every process of a multi-host run can read.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.parallel.activations import activation_sharding
from mixjax.parallel.sharding import ACTIVATION_RULES, batch_axes


# Batch keys that hold one value for the whole batch (per domain, or a fixed target set that
# every process holds identically), not one row per sequence: placed replicated.
REPLICATED_BATCH_KEYS = ("domain_counts", "sampling_weights", "target_tokens")


@functools.lru_cache(maxsize=64)
def _batch_sharding(mesh, axes: tuple[str, ...], ndim: int, key: str) -> NamedSharding:
    if key in REPLICATED_BATCH_KEYS:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(tuple(axes), *([None] * (ndim - 1))))


@functools.lru_cache(maxsize=64)
def _checked_axes(mesh, global_batch_size: int) -> tuple[str, ...]:
    """The batch axes of ``mesh``, once checked to split ``global_batch_size`` (a failed
    check raises, and is not cached)."""
    from mixjax.parallel import distributed

    axes = batch_axes(mesh)
    distributed.check_batch_divides(global_batch_size, mesh, axes)
    return axes


@functools.lru_cache(maxsize=64)
def _placer(mesh, axes: tuple[str, ...], keys: tuple[tuple[str, int], ...]):
    """A jitted identity whose ``in_shardings`` are the batch's: on a one-device mesh jit's
    C++ dispatch places host arrays in ~14 us where ``jax.device_put``'s Python path takes
    ~110 us for the same arrays (values, dtypes, shardings; ``benchmarks/bench_host.py``).
    On a mesh of several devices the identity runs a program and is slower than
    ``device_put`` (measured on 4 CPU devices), so it serves one-device meshes only."""
    shardings = {k: _batch_sharding(mesh, axes, ndim, k) for k, ndim in keys}
    return jax.jit(lambda b: b, in_shardings=(shardings,), out_shardings=shardings)


def shard_batch(batch, mesh, global_batch_size: int | None = None) -> dict:
    """Places a host batch: per-sequence arrays split over the batch axes, the rest replicated.

    Single process: ``batch`` is the whole global batch. Multi-process: each process
    passes only its rows ``distributed.process_rows(...)`` of the global batch and
    ``global_batch_size`` (required then); the job-wide arrays are assembled with
    ``jax.make_array_from_process_local_data``.
    """
    from mixjax.parallel import distributed

    rows = int(np.shape(batch["domain_id"])[0])
    if global_batch_size is None:
        if jax.process_count() > 1:
            raise ValueError("shard_batch: pass global_batch_size in a multi-process run "
                             "(each process holds only its rows)")
        global_batch_size = rows
    axes = _checked_axes(mesh, int(global_batch_size))
    if jax.process_count() == 1:
        # One process holds the whole batch: one device_put for every key (a third of the
        # cost of one make_array_from_process_local_data per key); the same arrays.
        if rows != global_batch_size:
            raise ValueError(f"batch has {rows} rows, expected the global batch of "
                             f"{global_batch_size}")
        host = {k: np.asarray(v) for k, v in batch.items()}
        if mesh.size == 1:
            return _placer(mesh, axes, tuple((k, v.ndim) for k, v in host.items()))(host)
        return jax.device_put(host, {k: _batch_sharding(mesh, axes, v.ndim, k)
                                     for k, v in host.items()})
    per_example = {k: np.asarray(v) for k, v in batch.items() if k not in REPLICATED_BATCH_KEYS}
    out = distributed.global_batch(per_example, mesh, axes, global_batch_size, replicated=())
    rep = NamedSharding(mesh, P())
    for k in REPLICATED_BATCH_KEYS:
        if k in batch:
            v = np.asarray(batch[k])
            out[k] = jax.make_array_from_process_local_data(rep, v, v.shape)
    return out


def jit_sharded_step(step_fn, state_shardings, *, donate: bool = True,
                     activation_rules=ACTIVATION_RULES, frozen_shardings=None):
    """``jax.jit`` of an unjitted ``(state, batch[, frozen]) -> (state, metrics)`` step.

    The state keeps ``state_shardings`` in and out, so a later step never sees a
    new layout (no recompilation after the first step); metrics come back
    replicated, so every process can read them; the batch keeps the layout
    ``shard_batch`` gave it; with ``frozen_shardings`` the step takes a third
    argument, the frozen inputs (a reference model), kept on those shardings and
    never donated. The
    step is traced inside :func:`activation_sharding`, so the model's logical
    activation constraints apply (``activation_rules=None``: none, GSPMD
    propagation only; a one-device mesh adds none, so single-device programs are
    exactly what they were).
    """
    mesh = jax.tree.leaves(state_shardings)[0].mesh
    if activation_rules is not None and mesh.size > 1:
        inner = step_fn

        def step_fn(state, batch, *frozen):
            with activation_sharding(mesh, activation_rules):
                return inner(state, batch, *frozen)
    # jit's in_shardings must name every positional argument: two without frozen inputs
    in_shardings = (state_shardings, None) + (
        () if frozen_shardings is None else (frozen_shardings,))
    return jax.jit(step_fn, in_shardings=in_shardings,
                   out_shardings=(state_shardings, NamedSharding(mesh, P())),
                   donate_argnums=(0,) if donate else ())


def replicate_value(value, mesh) -> jax.Array:
    """A host value every process holds identically, as a replicated global array."""

    value = np.asarray(value)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), value, value.shape)


def replicated_outputs(fn, mesh):
    """``fn`` jitted so that every output is replicated over ``mesh`` (readable by every
    process of a multi-host run, e.g. the eval function's per-sequence sums)."""
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))
