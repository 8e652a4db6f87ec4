"""Device mesh and logical-axis rules (minimal; one device by default).

The mesh has three axes, ``("data", "fsdp", "tensor")``, sized by the config's
``mesh`` section (``data * fsdp * tensor`` must equal the device count used).
Model parameters carry logical names (see ``mixjax.models.transformer``);
``RULES`` maps them to mesh axes:

=========  ===========  ======================================
logical    mesh axis    why
=========  ===========  ======================================
batch      data, fsdp   the batch is split over both data axes
vocab      tensor       embedding rows / logits columns
embed      fsdp         weights sharded along d_model (ZeRO-3)
heads      tensor       Megatron-style attention split
mlp        tensor       Megatron-style MLP split
head_dim   (none)
norm       (none)
=========  ===========  ======================================
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axes (GSPMD propagation).

    One size may be -1: it takes all devices the other two leave.
    """
    devices = list(devices if devices is not None else jax.devices())
    data, fsdp, tensor = resolve_sizes(data, fsdp, tensor, len(devices))
    n = data * fsdp * tensor
    if n > len(devices):
        raise ValueError(f"mesh data*fsdp*tensor = {data}*{fsdp}*{tensor} = {n} needs {n} "
                         f"devices; {len(devices)} available")
    return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices[:n])


def resolve_sizes(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
    if -1 in sizes:
        rest = 1
        for s in sizes:
            rest *= s if s != -1 else 1
        if num_devices % rest:
            raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {rest}")
        sizes[sizes.index(-1)] = num_devices // rest
    return tuple(sizes)


def logical_to_spec(names: tuple[str | None, ...], rules=RULES) -> P:
    """``("embed", "mlp") -> P("fsdp", "tensor")``; an unknown name is an error."""
    table = dict(rules)
    out = []
    for name in names:
        if name is None:
            out.append(None)
        elif name not in table:
            raise KeyError(f"no sharding rule for logical axis {name!r}; rules: {sorted(table)}")
        else:
            out.append(table[name])
    return P(*out)


def param_shardings(logical_axes, mesh, rules=RULES):
    """Pytree of NamedShardings for a pytree of logical-name tuples."""
    return jax.tree.map(lambda names: NamedSharding(mesh, logical_to_spec(names, rules)),
                        logical_axes, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
