"""The LM run: build everything from a Config, then train on the run engine.

:class:`Trainer` builds the step, the state, the sampler's batches and the
evaluation; :func:`train` runs them as a client of :mod:`mixjax.run.engine`
(:class:`mixjax.train.lm_client.LMClient`), which owns the loop, signals,
checkpoints and logs. Order of work in iteration t (batch t, producing weights w_t)::

    flush metrics of steps <= t - lag     (so set_weights(w_s, s) precedes batch s + lag)
    p_t   = sampler.weights_for(t);  batch_t = next(sampler)
    state, m_t = train_step(state, batch_t)          # async dispatch
    flush metrics of steps <= t - 1       (metrics reach the host one step late)
    every eval_every, and after the steps where mixer.wants_eval(done) is true:
                       flush all; evaluate; state.eval_loss <- per-domain val loss
    every ckpt_every, at the end, or on SIGTERM/SIGINT: flush all; save

"Flushing" step s fetches m_s, raises NonFiniteStatsError if the mixer saw a
non-finite statistic, writes metrics.jsonl / TensorBoard, and, when the weights
changed, appends to weights.jsonl and (apply_to sampling/both) calls
``sampler.set_weights(w_s, step=s)``, which the sampler applies from batch
``s + lag``. The data stream is a function of (seed, weight history) only, so
*when* the host calls set_weights does not matter as long as it is before batch
``s + lag`` is drawn; this is what makes a resumed run continue bit-for-bit:
a checkpoint at step k holds the train state after k steps and the sampler
state after k batches with every weight up to w_{k-1} handed over.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Callable

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax import methods, mixing, plugins
from mixjax.config import Config, ConfigError
from mixjax.parallel import distributed, sharding, step_sharding
from mixjax.run import checkpoints as run_ckpt
from mixjax.run import engine, feeds, logs
from mixjax.run.checkpoints import restore_good_checkpoint as _restore_good_checkpoint  # noqa: F401
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import evaluate as eval_lib
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.train import checks
from mixjax.train.batches import batch_maker, whole_batch_on_host  # noqa: F401
from mixjax.train.data import TrainData, build_data
from mixjax.train.eval_run import evaluate_run, format_eval  # noqa: F401
from mixjax.train.lm_client import MAX_PENDING, LMClient, NonFiniteLossError  # noqa: F401
from mixjax.train.lm_client import normalised as _normalised
from mixjax.train.lm_model import build_model, model_config  # noqa: F401
from mixjax.train.reference import load_reference
from mixjax.train.run_dir import (RESUMABLE_CHANGES, RunDirError, check_run_dir,  # noqa: F401
                                  load_run_config, prepare_run_dir)


@dataclasses.dataclass
class RunResult:
    run_dir: pathlib.Path
    steps_done: int
    interrupted: bool
    signal: int | None
    final_eval: dict | None
    state: Any = None


def target_count(target) -> int | None:
    """How many target domains ``grads.target`` names (None when it names none)."""
    if target is None:
        return None
    return len(target) if isinstance(target, tuple) else 1


class Trainer:
    """Everything a run needs, built from a Config (before anything compiles)."""

    def __init__(self, cfg: Config, data: TrainData | None = None):
        config_lib.validate(cfg)
        checks.check_names(cfg)     # registered names resolve when the run is built
        self.cfg = cfg
        self.data = data if data is not None else build_data(cfg)
        self.domains = tuple(self.data.domains)
        config_lib.check_domains(cfg, self.domains)
        k = len(self.domains)
        try:   # the mixer's own checks (names, hyperparameters, weights) before any compile
            self.mixer = mixing.build(cfg.mixing.name, cfg.mixing.hparams, domains=self.domains,
                                      token_counts=self.data.token_counts,
                                      apply_to=cfg.mixing.apply_to, total_steps=cfg.train.steps,
                                      tokens_per_step=cfg.data.batch_size * cfg.data.seq_len,
                                      num_targets=target_count(cfg.grads.target))
            self.mixer.init(k)
        except (ValueError, TypeError, KeyError) as e:
            msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
            # a ValueError/TypeError is a mixer's own check of its hyperparameters
            key = "mixing" if isinstance(e, KeyError) else "mixing.hparams"
            raise ConfigError(f"config key {key!r}: {msg}") from e
        self.pad_id = self.data.pad_id
        # The model of model.kind (mixjax.models.registry; default the transformer).
        spec = build_model(cfg, self.data.vocab_size)
        if cfg.model.kind == "demix" and spec.config.num_experts != k:
            raise ConfigError(f"config key 'model.hparams': model.hparams.num_experts="
                              f"{spec.config.num_experts} must equal the number of domains "
                              f"({k}: one DEMix expert per domain)")
        self.model_cfg = spec.config
        self.apply, abstract, self.logical_axes = (spec.apply, spec.abstract_params,
                                                   spec.logical_axes)
        self.init_from = None
        if cfg.model.init_from:   # pretrained parameters (mixjax.train.export, models.hf_io)
            from mixjax.models import hf_io
            from mixjax.train import export
            try:   # a run dir or a file of `mixjax export` / `mixjax demix` (any expert count)
                params, self.init_from = export.load_init_params(cfg.model.init_from,
                                                                 self.model_cfg, abstract)
            except (hf_io.ExportError, FileNotFoundError) as e:
                raise ConfigError(f"config key 'model.init_from': {e}") from None
            order = self.init_from.get("domains")
            if cfg.model.kind == "demix" and order is not None and list(order) != list(self.domains):
                raise ConfigError(f"config key 'model.init_from': its experts are the domains "
                                  f"{list(order)} in that order, data.domains gives "
                                  f"{list(self.domains)}; set data.domains in the file's order")
            # host arrays: placed shard by shard by the sharded init below
            params = jax.tree.map(np.asarray, params)
        else:
            # Created inside the jitted, sharded state init below (a function, not arrays):
            # every parameter is born in its shards, no device ever holds the whole model.
            seed = cfg.train.seed
            params = lambda: spec.init(seed)   # noqa: E731
        self.num_params = spec.num_params
        # The LR schedule's length: train.steps, or the original run's on an extended resume.
        self.schedule_steps = cfg.optim.schedule_steps or cfg.train.steps
        self.tx, self.schedule = state_lib.make_optimizer(cfg.optim, self.schedule_steps)
        # The step and its state come from the Method train.objective names (mixjax.methods):
        # the default one-model mixer step, or one that owns the weights (bilevel, fish).
        ctx = methods.MethodContext(
            cfg=cfg, domains=self.domains, apply=self.apply, pad_id=self.pad_id, tx=self.tx,
            schedule=self.schedule, schedule_steps=self.schedule_steps, mixer=self.mixer,
            load_reference=lambda: load_reference(cfg.train.reference, self.data.vocab_size),
            blocked_batches=whole_batch_on_host())
        parts = methods.build(cfg.train.objective, ctx, cfg.train.objective_hparams)
        self.mixer = parts.weights          # what the loop reads the weights through
        self.weights_move = parts.weights_move
        self.blocked_batches = ctx.blocked_batches
        self.step_fn = parts.step_fn
        self.check_stratified = parts.stratified
        self.target_tokens = self._target_tokens() if parts.needs_target else None
        # Mesh (mixjax.parallel.sharding): params and optimizer state sharded by the logical rules,
        # everything else replicated; the jitted step keeps that layout in and out.
        self.mesh = sharding.mesh_from_config(cfg.mesh)
        checks.check_expert_axis(self.mesh.shape["expert"], cfg.model)
        distributed.check_batch_divides(cfg.data.batch_size, self.mesh,
                                        sharding.batch_axes(self.mesh))
        # Parameters (unless loaded), optimizer and mixer state are created sharded by one
        # jitted init, so no device ever holds the whole model or optimizer state; the
        # values equal an eager init bit for bit (tests/test_pod_init.py).
        self.initial_state, self.state_shardings = sharding.init_state_sharded(
            parts.init_fn, params, self.logical_axes, self.mesh)
        # Frozen inputs (a reference model): the step's third argument, never donated.
        self.frozen, frozen_sh = sharding.place_frozen(parts.frozen, abstract, self.logical_axes,
                                                       self.mesh)
        jitted = step_sharding.jit_sharded_step(self.step_fn, self.state_shardings,
                                           frozen_shardings=frozen_sh)
        self.train_step = jitted if self.frozen is None else (
            lambda state, batch: jitted(state, batch, self.frozen))
        self.eval_fn = step_sharding.replicated_outputs(
            step_lib.make_eval_fn(self.apply, self.pad_id), self.mesh)
        # Held-out domains (an out-of-domain grads.target) are evaluated, never trained on.
        self.heldout = tuple(getattr(self.data, "heldout_domains", ()))
        self.eval_batches = eval_lib.prepare_eval_sets(
            self.data.eval_sets, self.domains + self.heldout, cfg.eval.num_seqs,
            cfg.eval.batch_size, self.pad_id)

    def _target_tokens(self) -> np.ndarray:
        """The target batch (``batch["target_tokens"]``): grads.target's validation split.

        The target may be a training domain or a held-out one (``TrainData.heldout_domains``:
        evaluated, never sampled for training; the DoGE out-of-domain setting).
        """
        cfg = self.cfg
        target = cfg.grads.target
        heldout = tuple(getattr(self.data, "heldout_domains", ()))
        several = isinstance(target, tuple)
        if target is None or not set(target if several else (target,)) <= set(
                self.domains + heldout):
            raise ConfigError(f"config key 'grads.target': {self.mixer.name!r} needs a target "
                              f"domain (its validation split gives the target batch); got "
                              f"{target!r}; training domains: {list(self.domains)}")
        if several and not getattr(self.mixer, "multi_target", False):
            raise ConfigError(f"config key 'grads.target': mixer {self.mixer.name!r} takes one "
                              f"target domain, got the list {list(target)}")
        target_sets = getattr(self.data, "target_sets", None) or {}

        def split(t):
            return np.asarray(target_sets[t] if t in target_sets else self.data.eval_sets[t])

        if not several:
            return split(target)[:cfg.eval.num_seqs]
        # [T, N, S+1]: one row block per target domain (N = the shortest split, <= num_seqs)
        n = min(cfg.eval.num_seqs, *(len(split(t)) for t in target))
        return np.stack([split(t)[:n] for t in target])

    def sampler_weights(self) -> np.ndarray:
        """The sampler's initial weights: the mixer's (sampling/both) or the reference p (loss)."""
        if self.mixer.apply_to == "loss":
            if self.cfg.mixing.sampling_weights == "uniform":
                return np.full(len(self.domains), 1.0 / len(self.domains))
            n = np.asarray(self.data.token_counts, np.float64)
            return n / n.sum()
        return _normalised(self.mixer.weights(self.initial_state.mix_state))

    def evaluate(self, params) -> dict:
        return eval_lib.evaluate_with_heldout(self.eval_fn, params, self.eval_batches,
                                              self.domains, self.heldout,
                                              self.cfg.eval.target_mixture)


def run_info(cfg: Config, trainer: Trainer) -> dict:
    """What ``run_info.json`` says of the run (provenance is added when it is written)."""
    from mixjax.data.eval_sets import eval_checksum
    mixer, data = trainer.mixer, trainer.data
    return {
        "num_params": trainer.num_params, "domains": list(trainer.domains),
        "model": dataclasses.asdict(trainer.model_cfg), "mixer": mixer.name,
        "apply_to": mixer.apply_to, "requires": sorted(mixer.requires),
        "objective": cfg.train.objective, "heldout_domains": list(trainer.heldout),
        "devices": [str(d) for d in jax.devices()],
        "mesh": dict(trainer.mesh.shape), "processes": jax.process_count(),
        # fingerprint of the eval sets (mixjax.data.eval_sets.eval_checksum):
        # runs are comparable only when it agrees (mixjax compare checks it)
        "eval_sets": {"sha256": getattr(data, "eval_checksum", None)
                      or eval_checksum(data.eval_sets,
                                       (getattr(data, "tokenizer", None)
                                        or {}).get("checksum", cfg.data.tokenizer.kind)),
                      "split": cfg.eval.split, "num_seqs": cfg.eval.num_seqs,
                      "tokenizer": config_lib.to_dict(cfg)["data"]["tokenizer"],
                      "seq_len": cfg.data.seq_len},
        "tokenizer": getattr(data, "tokenizer", None),
        "data_selection": getattr(data, "selection", None),
        "init_from": getattr(trainer, "init_from", None),
        "plugins": list(dict.fromkeys(list(cfg.train.plugins) + plugins.loaded()))}


def train(cfg: Config, *, data: TrainData | None = None, resume: bool = False,
          on_step: Callable[[int], None] | None = None, resume_from: int | None = None,
          rebuild_schedule: bool = False, log: Callable[[str], None] | None = None) -> RunResult:
    """Runs (or resumes) the training run ``cfg`` describes; returns a RunResult.

    Nothing is written to the run dir before the config, the run dir, the data, the
    mixer and the sampler are checked and built. ``resume_from``: resume from that
    checkpoint (implies ``resume``; newer checkpoints are moved aside, never deleted).
    ``log``: where one-line notes go (resume point, damaged checkpoints; stderr).
    """
    config_lib.validate(cfg)
    checks.check_names(cfg)
    checks.check_runnable(cfg)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    resume = resume or resume_from is not None
    if resume_from is not None and not (pathlib.Path(cfg.train.run_dir) / "checkpoints").is_dir():
        raise ckpt_lib.CheckpointError(f"--resume-from {resume_from}: run dir "
                                       f"{cfg.train.run_dir!r} has no checkpoints")
    notes = check_run_dir(cfg, resume, rebuild_schedule=rebuild_schedule)  # before building
    trainer = Trainer(cfg, data)
    if resume:   # the data stream depends on the selection file: the same one, by checksum
        from mixjax.data import selection as selection_lib
        selection_lib.check_resume(cfg.train.run_dir, getattr(trainer.data, "selection", None))
    main = distributed.is_main_process()   # multi-host: process 0 writes the run files
    # The sampler is built (and checks its data) before anything is written.
    sampler = trainer.data.make_sampler(trainer.sampler_weights())
    distributed.barrier("run_dir_checked")  # every process checked before process 0 writes
    if main:
        prepare_run_dir(cfg, resume, rebuild_schedule=rebuild_schedule)
        for line in notes:
            log(line)
    run_dir = pathlib.Path(cfg.train.run_dir)
    distributed.barrier("run_dir_ready")
    t_cfg = cfg.train
    domains, mixer = trainer.domains, trainer.mixer
    checkpointer = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep=t_cfg.keep_ckpts,
                                         async_save=True, defer=t_cfg.ckpt_defer)
    state = trainer.initial_state
    got = run_ckpt.resume(checkpointer, state, resume_from=resume_from, log=log) \
        if resume else None
    start = 0
    if got is not None:
        state, start = got.state, got.step
        sampler.set_state(got.sampler)   # this process's sampler state
        if main:
            log(f"resumed from step {start} ({checkpointer.directory / str(got.step)})")
    # A fresh run starts with fresh logs (a --resume that found no finished checkpoint
    # replaces what its killed predecessor logged, TensorBoard included).
    def trackers():
        from mixjax.train import tracking
        return tracking.build(t_cfg.trackers, t_cfg.tracker_args, run_dir,
                              config_lib.to_dict(cfg), domains)
    writer = logs.open_logs(run_dir, domains, resumed_step=None if got is None else start,
                            trackers=trackers, main=main)
    seen_weights = np.asarray(jax.device_get(mixer.weights(state.mix_state)), np.float32)
    if start == 0:
        writer.weights(0, seen_weights)
    if main:
        logs.write_run_info(run_dir, run_info(cfg, trainer))

    lag = getattr(sampler, "lag", cfg.data.lag)
    # The loop waits for a step's weights only where they feed the sampler and can change.
    gated = mixer.apply_to in ("sampling", "both") and trainer.weights_move
    ckpt_at = feeds.every(t_cfg.ckpt_every)
    feed = bar = None
    try:
        feed = feeds.SamplerFeed(sampler, batch_maker(trainer), start=start) \
            if feeds.draws_inline(cfg.data.prefetch) else \
            feeds.PrefetchFeed(sampler, batch_maker(trainer), start=start, end=t_cfg.steps,
                               lag=lag, gated=gated, holds=ckpt_at)
        if t_cfg.progress:
            from mixjax import progress
            bar = progress.bar(total=t_cfg.steps, initial=start, desc=cfg.name, unit="step")
        client = LMClient(trainer, feed, writer, checkpointer, seen_weights=seen_weights,
                          lag=lag, gated=gated, bar=bar)
        if start == 0 and "eval_loss" in mixer.requires:
            # A mixer that reads validation losses sees real ones from its first update.
            ev = trainer.evaluate(state.params)
            state = client.set_eval_loss(state, ev)
            writer.write("eval.jsonl", {"step": 0, **ev})
        out = engine.run_steps(client, state, feed, start=start, total=t_cfg.steps,
                               checkpointer=checkpointer, writer=writer, ckpt_at=ckpt_at,
                               eval_at=client.eval_at, on_step=on_step, bar=bar)
    finally:
        if feed is not None:
            feed.close()
        if bar is not None:
            bar.close()
        writer.close()
        checkpointer.close()
    return RunResult(run_dir=run_dir, steps_done=out.done, interrupted=out.signal is not None,
                     signal=out.signal, final_eval=client.final_eval, state=out.state)
