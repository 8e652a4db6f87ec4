"""The swarm's names, routes and strategies, its mesh and its proxies' seeds."""

from __future__ import annotations

import zlib

import jax

from mixjax.parallel import sharding

ROUTES = ("upsample", "upweight")
STRATEGIES = ("vmap", "map", "auto")
# Measured default per backend (benchmarks/bench_swarm.py; docs/search.md).
FASTER_ON = {"cpu": "map", "gpu": "vmap", "tpu": "vmap"}


class SwarmError(ValueError):
    """A swarm that cannot be built as asked (bad mixture, route, memory, mesh)."""


def resolve_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise SwarmError(f"swarm strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return FASTER_ON.get(jax.default_backend(), "vmap")
    return strategy


SWARM_AXES = ("models", "data", "fsdp")
# Parameter rules inside one proxy: the data-parallel rules of mixjax.parallel.sharding without
# tensor parallelism (the swarm mesh has no tensor axis).
PARAM_RULES = tuple((name, None if axis == "tensor" else axis)
                    for name, axis in sharding.RULES)


def swarm_mesh(models: int, data: int = 1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A ``("models", "data", "fsdp")`` mesh over the first models x data x fsdp devices.

    ``models`` is the outermost axis: with devices ordered by process (``jax.devices()``
    is), each host holds whole proxies as long as data x fsdp <= its local devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    for name, size in (("models", models), ("data", data), ("fsdp", fsdp)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SwarmError(f"swarm mesh axis {name} must be a positive integer, got {size!r}")
    n = models * data * fsdp
    if n > len(devices):
        raise SwarmError(f"swarm mesh models={models} x data={data} x fsdp={fsdp} needs {n} "
                         f"devices; {len(devices)} available")
    return jax.make_mesh((models, data, fsdp), SWARM_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices[:n])


def models_mesh(num_devices: int, devices=None) -> jax.sharding.Mesh:
    """The swarm mesh with only the proxy axis: ``models=num_devices``."""
    return swarm_mesh(num_devices, devices=devices)


def proxy_seed(seed: int, p: int) -> int:
    """The seed of proxy p (model init and composition RNG)."""
    return zlib.crc32(f"{int(seed)}/proxy/{int(p)}".encode()) & 0x7FFFFFFF
