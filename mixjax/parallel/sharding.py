"""Device mesh and logical-axis rules (minimal; one device by default).

The mesh has four axes, ``("data", "expert", "fsdp", "tensor")``, sized by the config's
``mesh`` section (``data * expert * fsdp * tensor`` devices are used; ``expert`` defaults
to 1, so a mesh without experts is the three-axis one it always was).
Model parameters carry logical names (see ``mixjax.models.transformer``);
``RULES`` maps them to mesh axes:

=========  ===========  ======================================
logical    mesh axis    why
=========  ===========  ======================================
batch      data,        the batch is split over every axis but tensor
           expert,
           fsdp
vocab      tensor       embedding rows / logits columns
embed      fsdp         weights sharded along d_model (ZeRO-3)
heads      tensor       Megatron-style attention split
mlp        tensor       Megatron-style MLP split
experts    expert       stacked expert weights (model.kind=moe):
                        expert parallelism, E/expert experts per device
head_dim   (none)
norm       (none)
=========  ===========  ======================================

Expert parallelism (``mesh.expert``, GShard arXiv 2006.16668 sec. 3): the batch is split
over ``expert`` like a data axis, and each expert's weights live on one ``expert`` shard.
The MoE layer's dispatched activations ``[E, B, C, d]`` carry ``act_experts`` (on
``expert``) and ``act_batch`` (on the remaining batch axes): going from tokens split by
batch row to tokens split by expert is the all-to-all, which GSPMD inserts for the
sharding constraint (``mixjax.models.moe``). Routing is per sequence, so the result does
not depend on the mesh (``tests/test_moe_parallel.py``).

Scale-out (how a run uses it, ``mixjax.train.loop``)::

    mesh = mesh_from_config(cfg.mesh)            # sizes from config, -1 = the rest
    shardings = train_state_shardings(state, logical_axes, mesh)
    state = place(state, shardings)               # params/opt sharded, the rest replicated
    step = step_sharding.jit_sharded_step(make_train_step(..., jit=False), shardings)
    batch = step_sharding.shard_batch(host_batch, mesh, global_batch_size)  # rows on (data, fsdp)
    state, metrics = step(state, batch)

Batch placement and the jitted sharded step live in ``mixjax.parallel.step_sharding``;
activation constraints by logical name (``constrain``) in ``mixjax.parallel.activations``.

Everything else is GSPMD: the step is written for the global batch, so
per-domain losses, counts, reference losses and gradient statistics are
global-batch quantities whatever the mesh (``tests/test_sharded_step.py``
checks weights and losses against one device). Rules are resolved per array
shape (``spec_for_shape``): a mesh axis that does not divide a dimension is
dropped for that dimension (replicated) rather than failing, so one rule
table serves a 2-layer test model on 8 fake CPU devices and a 1B model on a
TPU slice.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "expert", "fsdp", "tensor")


class ShardingFallbackWarning(UserWarning):
    """A rule's mesh axis does not divide a parameter dimension: that dimension is replicated."""

# A list, extended in place by declare_axes (a registered model kind's own logical names),
# so the functions' ``rules=RULES`` defaults see the additions.
RULES: list[tuple[str, Any]] = [
    ("batch", ("data", "expert", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),         # the stacked-blocks axis of model.scan_layers (scanned over)
    ("experts", "expert"),    # stacked expert weights (model.kind=moe)
    ("router", None),         # the router's expert dimension (small, replicated)
]


def declare_axes(axis_rules: dict[str, Any], who: str = "a model") -> None:
    """Adds ``{logical name: mesh axis or None}`` to :data:`RULES` (``mixjax.models.registry``).

    Declaring a name again with the same mesh axis is a no-op; with another, an error.
    """
    table = dict(RULES)
    for name, axis in axis_rules.items():
        if axis is not None and not all(a in MESH_AXES for a in
                                        (axis if isinstance(axis, tuple) else (axis,))):
            raise ValueError(f"{who}: logical axis {name!r} maps to {axis!r}, not a mesh axis "
                             f"of {MESH_AXES}")
        if name in table:
            if table[name] != axis:
                raise ValueError(f"{who}: logical axis {name!r} already maps to "
                                 f"{table[name]!r}, not {axis!r}")
            continue
        RULES.append((name, axis))
        table[name] = axis

# Activations (MaxText-style logical names, set in the model by ``constrain``): the batch on
# the data axes, heads / MLP hidden / logits on tensor; the residual stream is replicated
# over tensor (Megatron), sequence unsplit.
ACTIVATION_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "expert", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_experts", "expert"),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None, *,
              expert: int = 1) -> jax.sharding.Mesh:
    """A ``(data, expert, fsdp, tensor)`` mesh with Auto axes (GSPMD propagation).

    One size may be ``-1``: all devices left over (``make_mesh(-1)`` uses every
    device for data parallelism). A mesh smaller than the device list uses the
    first devices. ``data`` is the outermost axis, so on a multi-host job each
    process owns a contiguous block of batch rows (``distributed.process_rows``)
    and ``tensor`` (innermost) stays within a host's fast interconnect.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = resolve_mesh_sizes(data=data, expert=expert, fsdp=fsdp, tensor=tensor,
                               num_devices=len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    n = int(np.prod(shape))
    if jax.process_count() > 1 and n < len(devices):
        raise ValueError(
            f"mesh {'*'.join(MESH_AXES)} = {'*'.join(map(str, shape))} = {n} uses {n} of the "
            f"{len(devices)} devices of a {jax.process_count()}-process job; a multi-host mesh "
            "must span every process (set one of the mesh sizes to -1)")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices[:n])


def resolve_mesh_shape(data: int = 1, fsdp: int = 1, tensor: int = 1,
                       num_devices: int | None = None) -> tuple[int, int, int]:
    """Mesh axis sizes with at most one ``-1`` replaced by "all remaining devices".

    ``(-1, 1, 1)`` on 8 devices -> ``(8, 1, 1)``; ``(2, -1, 1)`` -> ``(2, 4, 1)``.
    (Without an expert axis; :func:`resolve_mesh_sizes` takes every axis.)
    """
    sizes = resolve_mesh_sizes(data=data, fsdp=fsdp, tensor=tensor, num_devices=num_devices)
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def resolve_mesh_sizes(*, num_devices: int | None = None, **sizes: int) -> dict[str, int]:
    """``{axis: size}`` for every axis of :data:`MESH_AXES` (missing ones are 1), with at
    most one ``-1`` replaced by all the devices the others leave."""
    n = len(jax.devices()) if num_devices is None else num_devices
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    sizes = {a: sizes.get(a, 1) for a in MESH_AXES}
    bad = {k: v for k, v in sizes.items()
           if v != -1 and (isinstance(v, bool) or not isinstance(v, int) or v < 1)}
    if bad:
        raise ValueError(f"mesh sizes must be positive integers or -1 (the rest), got {bad}")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1 (the rest), got -1 for {free}")
    fixed = 1
    for v in sizes.values():
        fixed *= v if v != -1 else 1
    shown = {k: v for k, v in sizes.items() if k != "expert" or v != 1}
    if free:
        if n % fixed:
            raise ValueError(f"mesh {shown}: {n} devices are not divisible by the product "
                             f"{fixed} of the fixed axes")
        sizes[free[0]] = n // fixed
    total = int(np.prod(list(sizes.values())))
    if total > n:
        used = [a for a in MESH_AXES if a != "expert" or sizes[a] != 1]
        raise ValueError(f"mesh {'*'.join(used)} = {'*'.join(str(sizes[a]) for a in used)} "
                         f"= {total} needs {total} devices; {n} available")
    return sizes


def mesh_from_config(mesh_cfg, devices=None) -> jax.sharding.Mesh:
    """The mesh of a config's ``mesh`` section (``data``/``fsdp``/``tensor``, optional
    ``expert``)."""
    return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices=devices,
                     expert=getattr(mesh_cfg, "expert", 1))


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


def batch_axes(mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (the ``batch`` rule), without the axes
    ``mesh`` lacks and without ``expert`` when it has size 1 (a mesh without experts lays
    the batch out as it always did: ``P(("data", "fsdp"))``)."""
    entry = dict(RULES)["batch"]
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    return tuple(a for a in axes if a in mesh.shape and (a != "expert" or mesh.shape[a] > 1))


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh), *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# -- shape-aware rules, state placement, sharded step (scale-out) ---------------
def spec_for_shape(names: tuple[str | None, ...], shape: tuple[int, ...], mesh,
                   rules=RULES, *, what: str | None = None) -> P:
    """``logical_to_spec`` that never produces an impossible or uneven layout.

    A mesh axis is dropped from a dimension (the dimension is replicated over it)
    when the dimension is not divisible by the axis size or the axis was already
    used by an earlier dimension of the same array; size-1 axes are dropped. So a
    rule table written for a big model still places a tiny test model, and 5 KV
    heads on tensor=4 fall back to replication instead of failing to compile.
    When ``what`` names the array (a parameter path), every divisibility fallback
    is reported as a :class:`ShardingFallbackWarning` naming the array, the
    dimension, its logical name and the mesh axis: a replicated dimension of a
    large model costs memory on every device and should be seen.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not match the array shape {shape}")
    spec = logical_to_spec(names, rules)
    used: set[str] = set()
    out = []
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    for i, (dim, entry) in enumerate(zip(shape, entries)):
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        kept = []
        for axis in axes:
            size = mesh.shape.get(axis, 1)       # an axis the mesh lacks: not split over
            if size == 1 or axis in used:
                continue
            prod = size
            for k in kept:
                prod *= mesh.shape[k]
            if dim % prod == 0:
                kept.append(axis)
            elif what is not None:
                warnings.warn(
                    f"sharding fallback: {what} dimension {i} ({names[i]!r}, size {dim}) is "
                    f"not divisible by {prod} (mesh axis {axis!r} of size {size}"
                    + (f" after {kept}" if kept else "") + f"); replicated over {axis!r}",
                    ShardingFallbackWarning, stacklevel=3)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def shape_aware_param_shardings(params, logical_axes, mesh, rules=RULES):
    """NamedShardings for ``params`` (arrays or ShapeDtypeStructs) via ``spec_for_shape``;
    a rule that falls back to replication warns, naming the parameter (``params['embed']``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x, names: NamedSharding(mesh, spec_for_shape(
            tuple(names), x.shape, mesh, rules, what="params" + jax.tree_util.keystr(path))),
        params, logical_axes)


def mirror_shardings(tree, params, param_sharding, mesh):
    """Shardings for a pytree that embeds copies of the params tree (optimizer state).

    Every subtree with exactly the params' tree structure (Adam's ``mu``/``nu``,
    momentum, ...) gets the params' shardings; every other leaf (step counts,
    scalars) is replicated.
    """
    pdef = jax.tree.structure(params)
    rep = NamedSharding(mesh, P())

    def is_params_like(x):
        return jax.tree.structure(x) == pdef and not (
            pdef.num_leaves == 1 and jax.tree.structure(x).num_nodes == 1)

    return jax.tree.map(lambda sub: param_sharding if is_params_like(sub) else rep,
                        tree, is_leaf=is_params_like)


def train_state_shardings(state, logical_axes, mesh, rules=RULES):
    """Shardings of a train state, decided per field.

    A :class:`~mixjax.core.state.TrainState`: ``params`` follow the logical
    rules; ``opt_state`` and the method-owned ``extra`` mirror them (every
    subtree with the params' structure, e.g. Adam's moments or bilevel's lower
    model, is sharded like ``params``; every other leaf replicated);
    ``mix_state``, ``step``, ``rng`` and ``eval_loss`` (small per-domain
    vectors) are replicated. A plain mapping with a ``params`` key (a bare
    ``{params, opt_state}`` init, a :class:`~mixjax.core.state.FrozenInputs`
    tree) is treated the same way: ``params`` by the rules, the rest mirrored.
    """
    params = state.params if hasattr(state, "params") else state["params"]
    psh = shape_aware_param_shardings(params, logical_axes, mesh, rules)
    rep = NamedSharding(mesh, P())
    mirror = lambda tree: mirror_shardings(tree, params, psh, mesh)   # noqa: E731
    if hasattr(state, "replace") and hasattr(state, "mix_state"):
        return state.replace(
            params=psh, opt_state=mirror(state.opt_state),
            mix_state=jax.tree.map(lambda _: rep, state.mix_state),
            step=jax.tree.map(lambda _: rep, state.step),
            rng=jax.tree.map(lambda _: rep, state.rng),
            eval_loss=jax.tree.map(lambda _: rep, state.eval_loss),
            extra=mirror(state.extra))
    return {key: psh if key == "params" else mirror(value) for key, value in state.items()}


def frozen_shardings(frozen, params, logical_axes, mesh, rules=RULES):
    """Shardings of a step's frozen inputs: a params-shaped model (a reference model)
    like ``params``, anything else replicated."""
    psh = shape_aware_param_shardings(params, logical_axes, mesh, rules)
    return mirror_shardings(frozen, params, psh, mesh)


def init_params_sharded(params_fn: Callable[[], Any], logical_axes, mesh, rules=RULES):
    """``(params, shardings)``: ``params_fn()`` (e.g. ``lambda:
    transformer.init_params(cfg, seed)``) run as ONE jitted call whose outputs are born
    in their shards (``out_shardings`` from the abstract shapes, ``jax.eval_shape``): no
    device ever holds an unsharded parameter, whatever the model size. Random values
    equal an eager ``params_fn()`` (``tests/test_pod_init.py``).
    """
    abstract = jax.eval_shape(params_fn)
    shardings = shape_aware_param_shardings(abstract, logical_axes, mesh, rules)
    return jax.jit(params_fn, out_shardings=shardings)(), shardings


def init_state_sharded(init_fn, params, logical_axes, mesh, *, rules=RULES):
    """``(state, shardings)``: ``init_fn(params)`` (the train state) built by one
    jitted call whose outputs are born sharded.

    ``params``: arrays, placed by the rules first (host numpy arrays, e.g. loaded
    pretrained weights, shard by shard: :func:`place_host`); or a zero-argument function that
    creates them (``lambda: transformer.init_params(cfg, seed)``), run inside the same
    jitted call so the parameters, too, are born in their shards (pod-scale init: no
    device ever holds the whole model). Optimizer moments and the rest are created
    directly in their shards (a 1B model's Adam state never sits on one device).
    Values equal an eager ``init_fn(params)``: it only copies and fills. Frozen inputs
    (a reference model) are placed by :func:`place_frozen`.
    """
    if callable(params):
        params_fn = params
        abstract = jax.eval_shape(lambda: init_fn(params_fn()))
        shardings = train_state_shardings(abstract, logical_axes, mesh, rules)
        return jax.jit(lambda: init_fn(params_fn()), out_shardings=shardings)(), shardings
    abstract = jax.eval_shape(init_fn, params)
    shardings = train_state_shardings(abstract, logical_axes, mesh, rules)
    params_sh = shardings.params if hasattr(shardings, "params") else shardings["params"]
    host = all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    placed = place_host(params, params_sh) if host else place(params, params_sh)
    state = jax.jit(init_fn, in_shardings=(params_sh,), out_shardings=shardings)(placed)
    return state, shardings


def place_frozen(frozen, params, logical_axes, mesh, rules=RULES):
    """``(frozen, shardings)``: a step's frozen inputs placed (a reference model like
    ``params``); ``(None, None)`` for none."""
    if frozen is None:
        return None, None
    shardings = frozen_shardings(frozen, params, logical_axes, mesh, rules)
    return place(frozen, shardings), shardings


def place_host(tree, shardings):
    """Host (numpy) arrays onto ``shardings``, each device receiving only its own shard
    (``jax.make_array_from_callback``): loaded weights are never whole on one device.
    Every process must hold the same host arrays."""
    def put(x, sh):
        return jax.make_array_from_callback(x.shape, sh, lambda index: x[index])
    return jax.tree.map(put, tree, shardings)


def place(tree, shardings):
    """``tree`` copied onto ``shardings`` (host arrays must be identical on every process).

    Always copies (a jitted copy): the state may hold one buffer twice (a
    mixer's ``weights`` and ``weight_sum`` start as the same array), and a donated
    step must not receive the same buffer in two places.
    """
    import jax.numpy as jnp

    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)
