"""Multi-process JAX: start-up, which rows of the global batch a process owns, and
assembling global arrays from process-local data.

Every process of a job runs the same program. ``initialize()`` joins them with
``jax.distributed.initialize`` (argument-free on Cloud TPU and SLURM, where the
coordinator, process count and id are auto-detected; explicit for a local test on
127.0.0.1). Afterwards ``jax.devices()`` lists the devices of *all* processes and a
mesh built from them spans the job.

Data: the global batch of ``B`` rows is split along the batch axis of the mesh. A
process holds rows ``[start, stop)`` of it, where the block is read off the batch
sharding (``process_rows``), not assumed from ``process_index``: the mesh decides
which devices, hence which rows, live on which host. With the usual mesh from
``parallel.make_mesh`` the block is ``[p*B/P, (p+1)*B/P)``. A process loads only
its rows and ``global_batch`` stitches the job-wide ``jax.Array`` with
``jax.make_array_from_process_local_data``; inside ``jax.jit`` the step then sees
the global batch, so per-domain statistics are global-batch quantities.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Environment variables read by ``initialize`` (all optional).
ENV_ENABLE = "MIXJAX_DISTRIBUTED"          # "1": call jax.distributed.initialize()
ENV_COORDINATOR = "MIXJAX_COORDINATOR"     # host:port of process 0
ENV_NUM_PROCESSES = "MIXJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MIXJAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
               timeout_s: int = 300, force: bool = False) -> bool:
    """Joins this process to a multi-process job; returns True if it did.

    Runs ``jax.distributed.initialize`` when ``force`` is set, when any argument is
    given, or when ``MIXJAX_DISTRIBUTED=1`` (set by ``scripts/launch_*.sh``). Missing
    arguments come from ``MIXJAX_COORDINATOR`` / ``MIXJAX_NUM_PROCESSES`` /
    ``MIXJAX_PROCESS_ID``, then from JAX's cluster auto-detection (TPU, SLURM, MPI,
    Kubernetes). Must run before any other JAX call. A second call is a no-op.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    wanted = force or os.environ.get(ENV_ENABLE) == "1" or any(
        v is not None for v in (coordinator_address, num_processes, process_id))
    if not wanted:
        return False
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is outside [0, num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)
    return True


def shutdown() -> None:
    """Leaves the job (call at exit; a no-op in a single-process run)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def is_main_process() -> bool:
    """Process 0 writes logs and metrics; every process takes part in checkpoints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def process_rows(sharding: jax.sharding.Sharding, global_batch_size: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of global batch rows this process holds.

    Read off ``sharding`` (the batch sharding of the leading axis): the rows of every
    device this process addresses. A mesh that gives a process a non-contiguous set
    of rows cannot be fed from a per-process loader and is rejected here.
    """
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows: set[int] = set()
    for index in index_map.values():
        rows.update(range(*index[0].indices(global_batch_size)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(
            f"process {jax.process_index()} holds non-contiguous batch rows {sorted(rows)} "
            f"of {global_batch_size}; order the mesh devices by process (parallel.make_mesh does)")
    return start, stop


def check_batch_divides(global_batch_size: int, mesh: jax.sharding.Mesh,
                        batch_axes: Sequence[str]) -> None:
    """A clear error when the batch does not split evenly over the batch mesh axes."""
    shards = int(np.prod([mesh.shape[a] for a in batch_axes])) if batch_axes else 1
    if global_batch_size % shards:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {shards} batch "
            f"shards of mesh axes {tuple(batch_axes)} (mesh {dict(mesh.shape)})")


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                 batch_axes: Sequence[str], global_batch_size: int,
                 replicated: Sequence[str] = ("domain_counts",)) -> dict[str, jax.Array]:
    """Job-wide arrays from this process's rows of a batch.

    ``local[key]`` holds rows ``process_rows(...)`` of the global batch along axis 0
    and is laid out on ``P(batch_axes)``; keys in ``replicated`` are whole-batch
    values that every process holds identically (they are placed replicated).
    """
    batch_sharding = NamedSharding(mesh, P(tuple(batch_axes)))
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        if key in replicated:
            out[key] = jax.make_array_from_process_local_data(
                NamedSharding(mesh, P()), value, value.shape)
            continue
        spec = P(tuple(batch_axes), *([None] * (value.ndim - 1)))
        start, stop = process_rows(batch_sharding, global_batch_size)
        if value.shape[0] != stop - start:
            raise ValueError(
                f"batch[{key!r}] has {value.shape[0]} rows on process {jax.process_index()}, "
                f"expected rows [{start}, {stop}) of the global batch of {global_batch_size}")
        out[key] = jax.make_array_from_process_local_data(
            NamedSharding(mesh, spec), value, (global_batch_size, *value.shape[1:]))
    return out


def fetch(x: Any) -> Any:
    """Host numpy copies of (possibly multi-process) arrays, gathered on every process."""
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, x)
