"""A swarm of P proxy models with identical shapes, trained together in one compiled step.

Every proxy p has a mixture h_p (float[K]) and a seed. Its train state is the
ordinary train-step state of :mod:`mixjax.core.step` (params, AdamW state, a
static ``uniform`` mixer whose weights are set to h_p, step, rng); the swarm
stacks the P states on a leading axis and runs the *unchanged* step
(``make_train_step(..., jit=False)``) for every proxy inside one ``jax.jit``:

* ``vmap``: ``jax.vmap(step)`` over the proxy axis (one batched program);
* ``map``:  ``jax.lax.map(step)`` over the proxy axis (a loop inside the program:
  one proxy's activations live at a time).

Which is faster depends on the backend and on the proxy size; ``strategy="auto"``
takes the measured default of :data:`FASTER_ON` (benchmarks/bench_swarm.py
measures both; docs/search.md gives the figures).

Two data routes ("upsample or upweight", Li et al. 2025, arXiv 2410.04579):

* ``upweight``: every proxy sees the same stratified batch drawn with the
  uniform mixture (one data pipeline). The step runs with ``apply_to="loss"``
  and ``sampling_weights = c / B`` (c = the batch's rows per domain), so its
  token weight for domain d is ``r_d = h_p[d] / (c_d / B)`` and its
  self-normalised objective is exactly ``sum_d h_p[d] loss_d`` when every row
  has the same number of loss tokens (packed sequences do).
* ``upsample``: proxy p gets its own batch of B rows whose domains are drawn with
  h_p (``stratified``: exact largest-remainder counts; ``multinomial``: i.i.d.)
  by one :class:`~mixjax.data.composer.BatchComposer` per proxy; the rows are
  read from one shared set of per-domain pipelines (one
  :class:`~mixjax.data.DomainSampler`'s iterators), so tokens are [P, B, S+1].
  The step runs with ``apply_to="sampling"`` (r_d = 1).

Both have the same expected gradient; under SGD the upsampled gradient has the
lower variance for the domains a proxy weights highly, while upweighting spends
the batch on domains that a proxy weights at 0 and reuses one pipeline (cheap
host side); upweighting a domain by a large h/share also amplifies its noise.

Per-proxy NaN isolation: a proxy whose loss or gradient norm is non-finite keeps
its previous state and is marked dead (``alive[p] = False``, ``died_at[p] =
step``); it never takes another update and is dropped from the fit. The
swarm never raises for it.

Sharding (:func:`swarm_mesh`, axes ``("models", "data", "fsdp")``): the proxy axis
is split over ``models``; within a proxy, its batch rows are split over ``data`` and
``fsdp`` and its parameters and Adam moments along ``d_model`` over ``fsdp`` (the
``embed`` rule of :mod:`mixjax.parallel.sharding`), so a mesh of M x D x F devices runs P / M
proxies per group of D x F devices. Stacked leaf ``[P, ...]`` -> ``P("models",
*param_spec)``; upsample batch ``[P, B, S+1]`` -> ``P("models", ("data", "fsdp"))``;
upweight batch ``[B, S+1]`` -> ``P(("data", "fsdp"))``. There is no communication
between proxies; within a proxy it is GSPMD's (gradient all-reduce over data,
all-gathers of fsdp-sharded weights). Under a mesh the ``map`` strategy runs
``vmap`` over the ``models`` shards of a ``lax.map`` over each shard's proxies,
so no proxy's state crosses devices. Multi-host: each process draws and places
only the rows its devices hold (:meth:`Swarm.local_block`,
``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mixjax import methods, mixing
from mixjax.parallel import distributed, sharding
from mixjax.config import Config, ConfigError
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib

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


# ---------------------------------------------------------------------------- data
class UpweightBatches:
    """One stratified uniform batch per step, shared by every proxy."""

    route = "upweight"

    def __init__(self, sampler):
        self.sampler = sampler

    def __next__(self) -> dict[str, np.ndarray]:
        b = next(self.sampler)
        counts = np.asarray(b["domain_counts"], np.float64)
        return {"tokens": np.asarray(b["tokens"], np.int32),
                "domain_id": np.asarray(b["domain_id"], np.int32),
                "sampling_weights": (counts / counts.sum()).astype(np.float32)}

    def get_state(self) -> dict:
        return {"sampler": self.sampler.get_state()}

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state["sampler"])


class UpsampleBatches:
    """Per-proxy batches [P, B, S+1]: one composer per proxy, shared domain pipelines."""

    route = "upsample"

    def __init__(self, sampler, mixtures: np.ndarray, *, mode: str, seed: int,
                 proxies: range | None = None):
        from mixjax.data.composer import BatchComposer
        self.sampler = sampler          # its per-domain iterators supply every proxy's rows
        # the proxies this process draws (all of them on one host; its block on a pod)
        proxies = range(len(mixtures)) if proxies is None else proxies
        self.mixtures = np.asarray(mixtures, np.float64)[proxies.start:proxies.stop]
        self.composers = [BatchComposer(sampler.domains, batch_size=sampler.batch_size,
                                        weights=np.asarray(mixtures, np.float64)[p], mode=mode,
                                        seed=proxy_seed(seed, p)) for p in proxies]
        self._weights = self.mixtures.astype(np.float32)
        self._weights.flags.writeable = False   # shared by every batch

    def __next__(self) -> dict[str, np.ndarray]:
        from mixjax.data.composer import next_ids_many
        n, b = len(self.composers), self.sampler.batch_size
        ids, counts = next_ids_many(self.composers)   # = each composer's next_ids()
        # All proxies' rows in one read, proxy-major: domain d's pipeline hands its next
        # sum_p n_{p,d} sequences to the rows of d in (proxy, row) order, which is the
        # order of one read per proxy, so the tokens and the iterator states are the
        # same (tests/test_search_swarm.py), with K block copies instead of P x K.
        tokens = self.sampler.read_rows(ids.reshape(-1)).reshape(n, b, -1)
        return {"tokens": tokens, "domain_id": ids, "domain_counts": counts,
                "sampling_weights": self._weights}

    def get_state(self) -> dict:
        return {"sampler": self.sampler.get_state(),
                "composers": [c.get_state() for c in self.composers]}

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state["sampler"])
        for c, s in zip(self.composers, state["composers"]):
            c.set_state(s)


# --------------------------------------------------------------------------- swarm
@dataclasses.dataclass
class SwarmResult:
    losses: np.ndarray          # float64[P, K'] final per-domain eval loss (K' incl. held out)
    eval_domains: tuple[str, ...]
    alive: np.ndarray           # bool[P]
    died_at: np.ndarray         # int[P] (-1: alive)
    steps: int
    seconds: float
    history: list               # [(step, float[P, K'])] evaluations on the eval_every grid
    # wall seconds per phase of this call (init, batches, first_step = compile + one step,
    # steps, eval, checkpoint); measured with the device synchronised at phase ends only
    # where the loop already waits (logging, eval, checkpoint), so "steps" includes the
    # asynchronous device time of the steps it overlapped
    timings: dict = dataclasses.field(default_factory=dict)


class Swarm:
    """P proxies of the LM ``cfg`` describes, one per row of ``mixtures``.

    Args:
      cfg: the proxy config (model, optimiser, steps, data, eval); its mixer is ignored.
      mixtures: float[P, K] rows on the simplex, in the data's domain order.
      route: ``upsample`` | ``upweight`` (module docstring).
      strategy: ``vmap`` | ``map`` | ``auto``.
      models: devices of the ``models`` mesh axis (1: no sharding); must divide P.
      data_shards, fsdp: devices of the ``data`` / ``fsdp`` axes within each proxy
        (batch rows over both; parameters along d_model over ``fsdp``).
      data: a prebuilt :class:`mixjax.train.data.TrainData` (built from cfg when None).
      tx: an optax optimiser replacing the config's (tests use SGD to read gradients).
    """

    def __init__(self, cfg: Config, mixtures: np.ndarray, *, route: str = "upsample",
                 strategy: str = "vmap", models: int = 1, data=None, tx=None,
                 devices=None, data_shards: int = 1, fsdp: int = 1):
        from mixjax.models import transformer
        from mixjax.train import evaluate as eval_lib
        from mixjax.train.data import build_data
        from mixjax.train.loop import model_config
        if route not in ROUTES:
            raise SwarmError(f"swarm route must be one of {ROUTES}, got {route!r}")
        if getattr(cfg.model, "kind", "transformer") != "transformer":   # proxies: transformers
            raise SwarmError(f"the proxy swarm trains transformers; model.kind="
                             f"{cfg.model.kind!r} is not supported here")
        self.cfg, self.route = cfg, route
        self.strategy = resolve_strategy(strategy)
        self.data = data if data is not None else build_data(cfg)
        self.domains = tuple(self.data.domains)
        k = len(self.domains)
        mixtures = np.asarray(mixtures, np.float64)
        if mixtures.ndim != 2 or mixtures.shape[1] != k:
            raise SwarmError(f"mixtures must be [P, {k}] (domains {list(self.domains)}), "
                             f"got shape {mixtures.shape}")
        for p, h in enumerate(mixtures):
            try:
                mixing.check_weight_vector(h, self.domains, f"mixture of proxy {p}")
            except ValueError as e:
                raise SwarmError(str(e)) from None
        self.mixtures = mixtures
        self.num_proxies = n = len(mixtures)
        if n % models:
            raise SwarmError(f"mesh models={models} does not divide the {n} proxies")
        rows = data_shards * fsdp
        if cfg.data.batch_size % rows:
            raise SwarmError(f"mesh data={data_shards} x fsdp={fsdp} does not divide the "
                             f"proxies' batch of {cfg.data.batch_size} rows (data.batch_size)")
        self.mesh = (swarm_mesh(models, data_shards, fsdp, devices)
                     if models * rows > 1 else None)
        self.model_cfg = model_config(cfg, self.data.vocab_size)
        self.apply, abstract, self.logical_axes = transformer.abstract_init(self.model_cfg)
        self.params_per_proxy = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
        if tx is None:
            tx, schedule = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
        else:
            schedule = None
        self.tx = tx
        apply_to = "loss" if route == "upweight" else "sampling"
        self.mixer = mixing.build("uniform", {}, domains=self.domains,
                                  token_counts=self.data.token_counts, apply_to=apply_to)
        # Each proxy runs the default Method's step (mixjax.methods.mixer), unchanged.
        ctx = methods.MethodContext(cfg=cfg, domains=self.domains, apply=self.apply,
                                    pad_id=self.data.pad_id, tx=tx, schedule=schedule,
                                    schedule_steps=cfg.train.steps, mixer=self.mixer)
        self.step_fn = methods.build("mixer", ctx).step_fn
        self.seeds = [proxy_seed(cfg.train.seed, p) for p in range(n)]
        self._eval_one = lambda params, tokens: _eval_sums(self.apply, self.data.pad_id,
                                                           params, tokens)
        self.heldout = tuple(getattr(self.data, "heldout_domains", ()))
        self.eval_domains = self.domains + self.heldout
        self.eval_batches = eval_lib.prepare_eval_sets(
            self.data.eval_sets, self.eval_domains, cfg.eval.num_seqs, cfg.eval.batch_size,
            self.data.pad_id)
        self._train_step = None
        self._eval_fn = None
        self._state_shardings = None

    # -- state ----------------------------------------------------------------
    def init_state(self) -> dict:
        """Stacked per-proxy train states (+ ``alive``, ``died_at``), placed on the mesh."""
        return self.place(self.init_state_unplaced())

    def init_state_unplaced(self) -> dict:
        from mixjax.models import transformer
        k = len(self.domains)
        states = []
        for p, seed in enumerate(self.seeds):
            _, params, _ = transformer.init(self.model_cfg, seed)
            s = state_lib.init_state(params, self.tx, self.mixer, k, seed)
            w = jnp.asarray(self.mixtures[p], jnp.float32)
            s = s.replace(mix_state={**s.mix_state, "weights": w, "weight_sum": jnp.array(w)})
            states.append(s)
        proxy = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        return {"proxy": proxy, "alive": jnp.ones((self.num_proxies,), bool),
                "died_at": jnp.full((self.num_proxies,), -1, jnp.int32)}

    def state_shardings(self, state):
        """``P("models", *param_spec)`` for params and Adam moments (the param spec on the
        fsdp axis, :data:`PARAM_RULES`), ``P("models")`` for every other stacked leaf."""
        if self.mesh is None:
            return None
        mesh, axes = self.mesh, self.logical_axes
        # The proxies' stacked train state, as its flat checkpoint layout (TrainState.to_tree)
        typed = hasattr(state["proxy"], "to_tree")
        tree = state["proxy"].to_tree() if typed else state["proxy"]
        psh = sharding.shape_aware_param_shardings(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                         tree["params"]), axes, mesh, PARAM_RULES)
        stacked = jax.tree.map(lambda sh: NamedSharding(mesh, P("models", *sh.spec)), psh)
        lead = NamedSharding(mesh, P("models"))
        proxy = {}
        for key, value in tree.items():
            if key == "params":
                proxy[key] = stacked
            elif key == "opt_state":
                proxy[key] = sharding.mirror_shardings(value, tree["params"],
                                                       stacked, mesh)
                proxy[key] = jax.tree.map(
                    lambda sh: lead if sh.spec == P() else sh, proxy[key])
            else:
                proxy[key] = jax.tree.map(lambda _: lead, value)
        if typed:
            proxy = type(state["proxy"]).from_tree(proxy)
        return {"proxy": proxy, "alive": lead, "died_at": lead}

    def place(self, state):
        if self.mesh is None:
            return state
        self._state_shardings = self.state_shardings(state)
        return jax.device_put(state, self._state_shardings)

    def batch_shardings(self) -> dict | None:
        """Shardings of the device batch (module docstring)."""
        if self.mesh is None:
            return None
        rows = ("data", "fsdp")
        if self.route == "upweight":
            return {"tokens": NamedSharding(self.mesh, P(rows, None)),
                    "domain_id": NamedSharding(self.mesh, P(rows)),
                    "sampling_weights": NamedSharding(self.mesh, P())}
        return {"tokens": NamedSharding(self.mesh, P("models", rows, None)),
                "domain_id": NamedSharding(self.mesh, P("models", rows)),
                "sampling_weights": NamedSharding(self.mesh, P("models", None))}

    def local_block(self) -> tuple[range, range]:
        """``(proxies, rows)``: the block of the swarm's batch ``[P, B, ...]`` that this
        process's devices hold (everything on one host). Read off the batch sharding, as
        :func:`mixjax.parallel.distributed.process_rows` does for one model's batch."""
        n, b = self.num_proxies, self.cfg.data.batch_size
        if self.mesh is None:
            return range(n), range(b)
        sh = NamedSharding(self.mesh, P("models", ("data", "fsdp")))
        idx = sh.addressable_devices_indices_map((n, b)).values()
        proxies = sorted({p for i in idx for p in range(*i[0].indices(n))})
        rows = sorted({r for i in idx for r in range(*i[1].indices(b))})
        if (proxies[-1] - proxies[0] + 1 != len(proxies)
                or rows[-1] - rows[0] + 1 != len(rows)):
            raise SwarmError(f"process {jax.process_index()} holds a non-contiguous block of "
                             "the swarm's batch; order the devices by process")
        return range(proxies[0], proxies[-1] + 1), range(rows[0], rows[-1] + 1)

    # -- data -----------------------------------------------------------------
    def make_batches(self, sampler_mode: str | None = None):
        """The route's batch stream (host numpy batches)."""
        mode = sampler_mode or ("stratified" if self.cfg.data.sampler == "per_domain"
                                else self.cfg.data.sampler)
        seed = self.cfg.train.seed if self.cfg.data.seed is None else self.cfg.data.seed
        k = len(self.domains)
        if self.route == "upweight":
            sampler = self.data.make_sampler(np.full(k, 1.0 / k))
            if getattr(sampler, "mode", "stratified") != "stratified":
                # one shared stratified batch: every domain present in fixed proportions
                from mixjax import data as data_lib
                sampler = _stratified_copy(sampler, data_lib)
            return UpweightBatches(sampler)
        sampler = self.data.make_sampler(np.full(k, 1.0 / k))
        return UpsampleBatches(sampler, self.mixtures, mode=mode, seed=seed,
                               proxies=self.local_block()[0])

    def device_batch(self, batch: dict) -> dict:
        """The host batch of this process (its proxies, all rows) as global device arrays:
        each process places the rows its devices hold with
        ``jax.make_array_from_process_local_data`` (one host: the whole batch)."""
        keys = ("tokens", "domain_id", "sampling_weights")
        if self.mesh is None:
            return {k: jnp.asarray(batch[k]) for k in keys}
        shardings = self.batch_shardings()
        proxies, rows = self.local_block()
        n, b = self.num_proxies, self.cfg.data.batch_size
        out = {}
        for k in keys:
            v = np.asarray(batch[k])
            if k == "sampling_weights":
                local, shape = v, ((n,) if self.route == "upsample" else ()) + v.shape[-1:]
            elif self.route == "upweight":
                local, shape = v[rows.start:rows.stop], (b,) + v.shape[1:]
            else:
                local, shape = v[:, rows.start:rows.stop], (n, b) + v.shape[2:]
            out[k] = jax.make_array_from_process_local_data(shardings[k], local, shape)
        return out

    # -- the compiled step ------------------------------------------------------
    def _proxy_step(self, state_p, batch_p, alive_p, died_p):
        new, m = self.step_fn(state_p, batch_p)
        ok = jnp.isfinite(m["loss"]) & jnp.isfinite(m["grad_norm"]) & alive_p
        new = jax.tree.map(lambda o, x: jnp.where(ok, x, o), state_p, new)
        died = jnp.where(alive_p & ~ok, state_p.step, died_p)
        out = {"loss": m["loss"], "domain_loss": m["domain_loss"],
               "domain_count": m["domain_count"], "grad_norm": m["grad_norm"]}
        return new, ok, died, out

    def swarm_step_fn(self) -> Callable:
        """Unjitted ``(swarm_state, batch) -> (swarm_state, metrics[P])``."""
        shared = self.route == "upweight"

        def step(state, batch):
            proxy, alive, died = state["proxy"], state["alive"], state["died_at"]
            if self.strategy == "vmap":
                f = jax.vmap(self._proxy_step, in_axes=(0, None if shared else 0, 0, 0),
                             **self._spmd())
                new, ok, died, out = f(proxy, batch, alive, died)
            elif self.mesh is not None:
                # vmap over the models shards, lax.map over each shard's proxies: every
                # device loops over its own proxies, no proxy's state crosses devices
                m = self.mesh.shape["models"]
                split = lambda t: jax.tree.map(  # noqa: E731
                    lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), t)
                join = lambda t: jax.tree.map(  # noqa: E731
                    lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), t)
                if shared:
                    def shard(x):
                        return jax.lax.map(lambda y: self._proxy_step(y[0], batch, y[1], y[2]),
                                           x)
                    xs = split((proxy, alive, died))
                else:
                    def shard(x):
                        return jax.lax.map(lambda y: self._proxy_step(*y), x)
                    xs = split((proxy, batch, alive, died))
                new, ok, died, out = join(jax.vmap(shard, **self._spmd())(xs))
            else:
                if shared:
                    xs = (proxy, alive, died)
                    body = lambda x: self._proxy_step(x[0], batch, x[1], x[2])  # noqa: E731
                else:
                    xs = (proxy, batch, alive, died)
                    body = lambda x: self._proxy_step(*x)  # noqa: E731
                new, ok, died, out = jax.lax.map(body, xs)
            return {"proxy": new, "alive": ok, "died_at": died}, out

        return step

    def _spmd(self) -> dict:
        """vmap's ``spmd_axis_name``: the vmapped proxy axis is the ``models`` mesh axis."""
        return {} if self.mesh is None else {"spmd_axis_name": "models"}

    def train_step(self, abstract_state=None):
        if self._train_step is None:
            fn = self.swarm_step_fn()
            if self.mesh is None:
                self._train_step = jax.jit(fn, donate_argnums=(0,))
            else:
                if abstract_state is not None:
                    sh = self.state_shardings(abstract_state)
                elif self._state_shardings is not None:
                    sh = self._state_shardings
                else:
                    sh = self.state_shardings(jax.eval_shape(self.init_state_unplaced))
                lead = NamedSharding(self.mesh, P("models"))
                self._train_step = jax.jit(fn, in_shardings=(sh, self.batch_shardings()),
                                           out_shardings=(sh, lead), donate_argnums=(0,))
        return self._train_step

    # -- evaluation -------------------------------------------------------------
    def eval_fn(self):
        if self._eval_fn is None:
            if self.strategy == "vmap":
                f = jax.vmap(self._eval_one, in_axes=(0, None), **self._spmd())
            elif self.mesh is not None:
                m = self.mesh.shape["models"]

                def f(params, tokens):   # per models shard, a loop over its proxies
                    split = jax.tree.map(lambda x: x.reshape((m, -1) + x.shape[1:]), params)
                    out = jax.vmap(lambda ps: jax.lax.map(lambda p: self._eval_one(p, tokens),
                                                          ps), **self._spmd())(split)
                    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)
            else:
                def f(params, tokens):
                    return jax.lax.map(lambda p: self._eval_one(p, tokens), params)
            self._eval_fn = jax.jit(f)
        return self._eval_fn

    def _eval_tokens(self, tokens: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(tokens)
        # every process holds the same fixed eval set: a replicated global array
        return sharding.replicate_value(np.asarray(tokens), self.mesh)

    def evaluate(self, state) -> np.ndarray:
        """float64[P, K'] per-domain eval loss of every proxy (K' = domains + held out)."""
        fn = self.eval_fn()
        params = state["proxy"].params
        out = np.zeros((self.num_proxies, len(self.eval_domains)))
        for j, d in enumerate(self.eval_domains):
            res = [distributed.fetch(fn(params, self._eval_tokens(b)))
                   for b in self.eval_batches[d]]
            loss = sum(np.asarray(r[0], np.float64).sum(axis=1) for r in res)
            count = sum(np.asarray(r[1], np.float64).sum(axis=1) for r in res)
            out[:, j] = loss / np.maximum(count, 1.0)
        return out

    # -- memory -------------------------------------------------------------------
    def memory_estimate(self) -> dict:
        """Bytes the compiled swarm step needs, from the config alone (see docs/search.md)."""
        return estimate_memory(self.model_cfg, self.params_per_proxy, self.num_proxies,
                               self.cfg.data.batch_size, self.cfg.data.seq_len,
                               self.strategy, self.route)


def _stratified_copy(sampler, data_lib):
    """The same sampler in stratified mode (the upweight route needs fixed proportions)."""
    return data_lib.DomainSampler(
        dict(zip(sampler.domains, sampler.sources)), seq_len=sampler.seq_len,
        batch_size=sampler.batch_size, weights=None, tokenizer=sampler.tokenizer,
        mode="stratified", lag=sampler.lag, seed=sampler.seed, split=None,
        num_workers=sampler.num_workers, bos=sampler.bos, chunk=sampler.chunk,
        process_index=sampler.process_index, process_count=sampler.process_count)


def _eval_sums(apply, pad_id, params, tokens):
    tl, tm = step_lib.token_losses(apply, params, tokens, pad_id)
    return (tl * tm).sum(axis=1), tm.sum(axis=1)


def estimate_memory(model_cfg, params_per_proxy: int, num_proxies: int, batch: int,
                    seq_len: int, strategy: str, route: str) -> dict:
    """A config-only estimate of the swarm step's device memory (bytes, fp32).

    state:  vmap: P x params x 4 B x 4.5 (params, Adam mu and nu, the gradient and part of
            the update; the donated state is updated in place); map: P x params x 4 B x 6
            (the loop's stacked output is a second copy of params, mu, nu; the slope in P
            of XLA's figure for P = 8 -> 32)
    acts:   per proxy, per token, the values kept for the backward pass:
            2 V (logits and their gradient) + per layer 8 d + 6 d_ff (SwiGLU; 4 d_ff for
            GELU) + 3 H S (attention scores, probabilities and their gradient);
            times the proxies alive at once (P for vmap, 1 for map)
    batch:  tokens (P copies for upsample, 1 for upweight)

    The constants are a non-negative least-squares fit to XLA's compiled memory analysis
    (:func:`compiled_memory_bytes`) of ten proxy shapes on CPU (d_model 16-128, 1-3 layers,
    S 16-128, B 4-16, 2-8 heads, SwiGLU and GELU; every one within 12%), rounded;
    ``tests/test_search_swarm.py`` checks other shapes within 20%, and
    benchmarks/bench_swarm.py prints both for the benchmark's proxies.
    """
    b4 = 4
    d, layers, v = model_cfg.d_model, model_cfg.num_layers, model_cfg.vocab_size
    heads = model_cfg.num_heads
    d_ff = getattr(model_cfg, "ff_dim", None) or model_cfg.d_ff or 4 * d
    ff_values = 6 if getattr(model_cfg, "mlp", "swiglu") == "swiglu" else 4
    tokens = batch * seq_len
    copies = 4.5 if strategy == "vmap" else 6.0
    state = int(copies * num_proxies * params_per_proxy * b4)
    per_proxy_acts = tokens * b4 * (2 * v + layers * (8 * d + ff_values * d_ff
                                                      + 3 * heads * seq_len))
    live = num_proxies if strategy == "vmap" else 1
    acts = live * per_proxy_acts
    data = (num_proxies if route == "upsample" else 1) * batch * (seq_len + 1) * 4
    return {"state": state, "activations": acts, "batch": data, "total": state + acts + data}


def compiled_memory_bytes(swarm: Swarm) -> int:
    """Device bytes of the swarm's compiled train step by XLA's memory analysis:
    arguments + outputs - aliased (the donated state) + temporaries. Compiles the step
    for the swarm's shapes (abstract: nothing is initialised or run); one device."""
    state = jax.eval_shape(swarm.init_state_unplaced)
    n, b, s1 = swarm.num_proxies, swarm.cfg.data.batch_size, swarm.cfg.data.seq_len + 1
    k = len(swarm.domains)
    lead = (n,) if swarm.route == "upsample" else ()
    batch = {"tokens": jax.ShapeDtypeStruct(lead + (b, s1), jnp.int32),
             "domain_id": jax.ShapeDtypeStruct(lead + (b,), jnp.int32),
             "sampling_weights": jax.ShapeDtypeStruct(lead + (k,), jnp.float32)}
    compiled = jax.jit(swarm.swarm_step_fn(), donate_argnums=(0,)).lower(state, batch).compile()
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def available_memory_bytes() -> int | None:
    """Free memory of the first device (accelerator stats, else the host's MemAvailable)."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:   # noqa: BLE001 - not every backend reports stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(swarm: Swarm, fraction: float = 0.8) -> dict:
    """Refuses (SwarmError, with the estimate) a swarm whose estimate exceeds ``fraction``
    of the free memory of one device; returns the estimate."""
    est = swarm.memory_estimate()
    shape = {"models": 1, "data": 1, "fsdp": 1} if swarm.mesh is None else swarm.mesh.shape
    m, rows = shape["models"], shape["data"] * shape["fsdp"]
    # state split over models x fsdp; activations and batch over models x data x fsdp
    # (map: one proxy per models shard is live, its activations split over data x fsdp)
    acts = est["activations"] / (rows * (m if swarm.strategy == "vmap" else 1))
    per_device = est["state"] / (m * shape["fsdp"]) + acts + est["batch"] / (m * rows)
    free = available_memory_bytes()
    if free is not None and per_device > fraction * free:
        raise SwarmError(
            f"a swarm of {swarm.num_proxies} proxies ({swarm.params_per_proxy} parameters each, "
            f"strategy {swarm.strategy}) needs about {per_device / 2**30:.2f} GiB per device "
            f"(state {est['state'] / 2**30:.2f} GiB, activations "
            f"{est['activations'] / 2**30:.2f} GiB); {free / 2**30:.2f} GiB are free. Use "
            "--strategy map, fewer proxies, or more devices (--models)")
    return est


# ----------------------------------------------------------------------- the loop
def train_swarm(swarm: Swarm, out_dir: str | pathlib.Path, *, steps: int | None = None,
                ckpt_every: int | None = None, eval_every: int | None = None,
                progress: bool = False, log: Callable[[str], None] | None = None,
                stop_after: int | None = None) -> SwarmResult:
    """Trains the swarm for ``steps`` (cfg.train.steps), resuming from ``out_dir``'s
    latest checkpoint if there is one; evaluates every proxy at the end.

    ``out_dir`` holds ``checkpoints/`` (orbax: the stacked state + the data stream's
    state, so a resumed swarm continues bit for bit), ``metrics.jsonl`` (mean and
    per-proxy train loss every ``log_every`` steps) and ``result.json``.
    ``stop_after``: return after that many steps of this call (tests of resume).
    """
    from mixjax.train import checkpoint as ckpt_lib
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = swarm.cfg
    steps = cfg.train.steps if steps is None else steps
    ckpt_every = cfg.train.ckpt_every if ckpt_every is None else ckpt_every
    eval_every = cfg.train.eval_every if eval_every is None else eval_every
    t0 = time.perf_counter()
    timings = {k: 0.0 for k in ("init", "batches", "first_step", "steps", "eval", "checkpoint")}
    state = swarm.init_state()
    batches = swarm.make_batches()
    ck = ckpt_lib.Checkpointer(out / "checkpoints", keep=1)
    start = 0
    history: list = []
    latest = ck.latest_step()
    if latest is not None:
        abstract = jax.tree.map(ckpt_lib._abstract, state)
        state, host = ck.restore(latest, abstract)
        state = swarm.place(state)
        own = ck.restore_process(latest) if jax.process_count() > 1 else None
        batches.set_state(own["data"] if own else host["data"])
        start = int(host["step"])
        history = [(s, np.asarray(v)) for s, v in host.get("history", [])]
        if log:
            log(f"swarm: resumed at step {start} from {out / 'checkpoints'}")
    step = swarm.train_step()
    timings["init"] = time.perf_counter() - t0
    bar = None
    if progress:
        from mixjax import progress
        bar = progress.bar(total=steps, initial=start, desc=f"swarm x{swarm.num_proxies}",
                           unit="step")
    metrics_path = out / "metrics.jsonl"
    if start == 0:
        metrics_path.unlink(missing_ok=True)
    log_every = max(cfg.train.log_every, 1)

    def save(done: int) -> None:
        # multi-host: each process's data stream (its proxies' composers) in its own file
        data_state = batches.get_state()
        own = {"data": data_state} if jax.process_count() > 1 else None
        ck.save(done, state, {"step": done, "data": data_state,
                              "history": [(s, v.tolist()) for s, v in history]}, process=own)

    done = start
    try:
        with open(metrics_path, "a") as mf:
            for t in range(start, steps):
                if stop_after is not None and t - start >= stop_after:
                    break
                tb = time.perf_counter()
                batch = swarm.device_batch(next(batches))
                ts = time.perf_counter()
                timings["batches"] += ts - tb
                state, m = step(state, batch)
                if t == start:    # compilation + the first step
                    jax.block_until_ready(m)
                    timings["first_step"] += time.perf_counter() - ts
                    ts = None
                done = t + 1
                if done % log_every == 0 or done == steps:
                    loss = np.asarray(distributed.fetch(m["loss"]), np.float64)
                    alive = np.asarray(distributed.fetch(state["alive"]))
                    if distributed.is_main_process():
                        mf.write(json.dumps({"step": done, "loss_mean_alive": float(
                            loss[alive].mean()) if alive.any() else None,
                            "alive": int(alive.sum()), "loss": [
                                None if not np.isfinite(x) else float(x) for x in loss]}) + "\n")
                if ts is not None:   # the logging above waits for the device
                    timings["steps"] += time.perf_counter() - ts
                if eval_every and done % eval_every == 0 and done != steps:
                    te = time.perf_counter()
                    history.append((done, swarm.evaluate(state)))
                    timings["eval"] += time.perf_counter() - te
                if (ckpt_every and done % ckpt_every == 0) or done == steps:
                    tc = time.perf_counter()
                    save(done)
                    timings["checkpoint"] += time.perf_counter() - tc
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        ck.close()
    te = time.perf_counter()
    losses = swarm.evaluate(state)
    timings["eval"] += time.perf_counter() - te
    alive = np.asarray(distributed.fetch(state["alive"]))
    died = np.asarray(distributed.fetch(state["died_at"]))
    # A proxy alive whose eval loss is not finite is treated as diverged too.
    alive = alive & np.all(np.isfinite(losses), axis=1)
    result = SwarmResult(losses=losses, eval_domains=swarm.eval_domains, alive=alive,
                         died_at=died, steps=done, seconds=time.perf_counter() - t0,
                         history=history, timings=timings)
    result.state = state
    return result


def save_result(result: SwarmResult, mixtures: np.ndarray, domains, path) -> None:
    rec = {"domains": list(domains), "eval_domains": list(result.eval_domains),
           "mixtures": np.asarray(mixtures).tolist(),
           "losses": [[None if not np.isfinite(x) else float(x) for x in row]
                      for row in result.losses],
           "alive": result.alive.tolist(), "died_at": result.died_at.tolist(),
           "steps": result.steps, "seconds": result.seconds,
           "history": [(s, np.asarray(v).tolist()) for s, v in result.history]}
    pathlib.Path(path).write_text(json.dumps(rec) + "\n")


def load_result(path) -> tuple[SwarmResult, np.ndarray, tuple[str, ...]]:
    rec = json.loads(pathlib.Path(path).read_text())
    losses = np.array([[np.nan if x is None else x for x in row] for row in rec["losses"]])
    res = SwarmResult(losses=losses, eval_domains=tuple(rec["eval_domains"]),
                      alive=np.array(rec["alive"], bool), died_at=np.array(rec["died_at"]),
                      steps=rec["steps"], seconds=rec["seconds"],
                      history=[(s, np.array(v)) for s, v in rec.get("history", [])])
    return res, np.array(rec["mixtures"]), tuple(rec["domains"])


def check_config(cfg: Config) -> None:
    """Swarm-specific config checks (the rest is config.validate's)."""
    if cfg.train.objective != "mixer":
        raise ConfigError(f"config key 'train.objective': a swarm trains plain proxies "
                          f"(objective 'mixer'), got {cfg.train.objective!r}")
    if cfg.train.grad_accum != 1:
        raise ConfigError("config key 'train.grad_accum': the swarm runs grad_accum = 1")
