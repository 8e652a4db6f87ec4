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

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mixjax import methods, mixing
from mixjax.config import Config, ConfigError
from mixjax.parallel import distributed, sharding, step_sharding
from mixjax.search.swarm_batches import UpsampleBatches, UpweightBatches, _stratified_copy
from mixjax.search.swarm_memory import (available_memory_bytes, check_memory,  # noqa: F401
                                        compiled_memory_bytes, estimate_memory)
from mixjax.search.swarm_mesh import (FASTER_ON, PARAM_RULES, ROUTES, STRATEGIES,  # noqa: F401
                                      SWARM_AXES, SwarmError, models_mesh, proxy_seed,
                                      resolve_strategy, swarm_mesh)
from mixjax.search.swarm_train import (SwarmResult, load_result, save_result,  # noqa: F401
                                       train_swarm)
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib


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
        from mixjax.train.lm_model import model_config
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
        # model.init_from: every proxy starts from the same pretrained parameters (continual
        # pre-training / fine-tuning swarms); the proxies' seeds still differ (data, rng)
        self.init_params = None
        if getattr(cfg.model, "init_from", None):
            from mixjax.models import hf_io
            from mixjax.train import export
            try:
                params, _ = export.load_init_params(cfg.model.init_from, self.model_cfg,
                                                    abstract)
            except (hf_io.ExportError, FileNotFoundError) as e:
                raise SwarmError(f"config key 'model.init_from': {e}") from None
            self.init_params = jax.tree.map(np.asarray, params)
        if tx is None:
            tx, schedule = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
        else:
            schedule = None
        self.tx = tx
        self.mixer = self.proxy_mixer("loss" if route == "upweight" else "sampling")
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
            if self.init_params is None:
                _, params, _ = transformer.init(self.model_cfg, seed)
            else:
                params = jax.tree.map(jnp.asarray, self.init_params)
            s = state_lib.init_state(params, self.tx, self.mixer, k, seed)
            states.append(s.replace(mix_state=self.proxy_mix_state(p, s.mix_state)))
        proxy = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        return {"proxy": proxy, "alive": jnp.ones((self.num_proxies,), bool),
                "died_at": jnp.full((self.num_proxies,), -1, jnp.int32)}

    def proxy_mixer(self, apply_to: str):
        """Every proxy's mixer: a static one whose weights :meth:`proxy_mix_state` sets
        (a subclass may replay per-proxy schedules instead, mixjax.search.agent_swarm)."""
        return mixing.build("uniform", {}, domains=self.domains,
                            token_counts=self.data.token_counts, apply_to=apply_to)

    def proxy_mix_state(self, p: int, mix_state: dict) -> dict:
        """Proxy ``p``'s initial mixer state: its mixture h_p."""
        w = jnp.asarray(self.mixtures[p], jnp.float32)
        return {**mix_state, "weights": w, "weight_sum": jnp.array(w)}

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
        return step_sharding.replicate_value(np.asarray(tokens), self.mesh)

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


def _eval_sums(apply, pad_id, params, tokens):
    tl, tm = step_lib.token_losses(apply, params, tokens, pad_id)
    return (tl * tm).sum(axis=1), tm.sum(axis=1)


def check_config(cfg: Config) -> None:
    """Swarm-specific config checks (the rest is config.validate's)."""
    if cfg.train.objective != "mixer":
        raise ConfigError(f"config key 'train.objective': a swarm trains plain proxies "
                          f"(objective 'mixer'), got {cfg.train.objective!r}")
    if cfg.train.grad_accum != 1:
        raise ConfigError("config key 'train.grad_accum': the swarm runs grad_accum = 1")
