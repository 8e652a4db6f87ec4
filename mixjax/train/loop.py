"""The run loop: build everything from a Config, train, evaluate, checkpoint.

Order of work in iteration t (batch t, producing weights w_t)::

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
import json
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax import methods, mixing, plugins, provenance, run_identity
from mixjax.config import Config, ConfigError
from mixjax.mixing import grads
from mixjax.parallel import distributed, sharding
from mixjax.train import atomic
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import checks
from mixjax.train import evaluate as eval_lib
from mixjax.train import metrics as metrics_lib
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.train.data import TrainData, build_data
from mixjax.train.prefetch import BatchPrefetcher
from mixjax.train.reference import load_reference

# Keys that may differ between a run's saved config and the one it is resumed with: the
# result-neutral ones (run_identity.NEUTRAL_KEYS) and those a resume may change on purpose.
RESUMABLE_CHANGES = run_identity.NEUTRAL_KEYS + (
    "train.steps", "train.eval_every",
    # set on resume to keep the LR schedule (check_run_dir)
    "optim.schedule_steps",
    # a checkpoint restores onto any mesh (tests/test_checkpoint_reshard.py)
    "mesh.data", "mesh.fsdp", "mesh.tensor")


class RunDirError(ValueError):
    """The run directory already holds a run (resume it or pick another)."""


class NonFiniteLossError(mixing.NonFiniteStatsError):
    """The training loss or gradient norm became non-finite: the run stops there.

    Raised for every mixer (static ones included) before the step's record is
    written or a checkpoint of its state is saved, so the run's files and its
    latest checkpoint end at the last finite step.
    """


@dataclasses.dataclass
class RunResult:
    run_dir: pathlib.Path
    steps_done: int
    interrupted: bool
    signal: int | None
    final_eval: dict | None
    state: Any = None


def model_config(cfg: Config, vocab_size: int):
    """The ``TransformerConfig`` of ``cfg.model`` (the vocabulary comes from the data); other
    kinds: ``mixjax.models.registry.build(cfg.model, vocab_size).config``."""
    from mixjax.models import registry as model_registry
    return model_registry.transformer_config(cfg.model, vocab_size)


def build_model(cfg: Config, vocab_size: int):
    """The :class:`~mixjax.models.registry.ModelSpec` of ``model.kind``; a bad kind or
    hyperparameter is a config error naming ``model.kind`` / ``model.hparams``."""
    from mixjax.models import registry as model_registry
    try:
        return model_registry.build(cfg.model, vocab_size)
    except KeyError as e:
        raise ConfigError(f"config key 'model.kind': {e.args[0]}") from None
    except (ValueError, TypeError) as e:
        key = "model" if cfg.model.kind == "transformer" else "model.hparams"
        raise ConfigError(f"config key {key!r}: {e}") from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("hparams", "sample_reweight_hparams", "target_mixture",
                                              "objective_hparams", "tracker_args"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_dir(cfg: Config, resume: bool, *, rebuild_schedule: bool = False) -> list[str]:
    """Checks (writes nothing) that ``cfg`` may start or resume its run dir; returns notes.

    On resume, ``train.run_dir`` itself is not compared (the saved config is read from
    the directory, wherever it now lives or however its path is spelled), and a longer
    or shorter ``train.steps`` keeps the original LR schedule (``optim.schedule_steps``
    is set to its length) unless ``rebuild_schedule``.
    """
    run_dir = pathlib.Path(cfg.train.run_dir)
    saved = run_dir / "config.json"
    holds_run = saved.exists() or (run_dir / "checkpoints").exists()
    notes = []
    if holds_run and not resume:
        raise RunDirError(f"run dir {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or set train.run_dir to a new directory")
    if resume and not holds_run:
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.json)"
        notes.append(f"--resume: run dir {str(run_dir)!r} {what}; starting a new run")
    if holds_run:
        old = _flatten(_current_schema(json.loads(saved.read_text()))) if saved.exists() else {}
        new = _flatten(config_lib.to_dict(cfg))
        if old and cfg.optim.schedule_steps is None:
            length = old.get("optim.schedule_steps") or old.get("train.steps")
            if rebuild_schedule:
                if length != cfg.train.steps:
                    notes.append(f"LR schedule rebuilt over train.steps={cfg.train.steps} "
                                 f"(was {length} steps; --rebuild-schedule)")
            elif length != cfg.train.steps:
                cfg.optim.schedule_steps = int(length)
                new["optim.schedule_steps"] = int(length)
                if old.get("train.steps") != cfg.train.steps:
                    notes.append(f"train.steps {old.get('train.steps')} -> {cfg.train.steps}: "
                                 f"the LR schedule keeps its original length ({length} steps; "
                                 "pass --rebuild-schedule to stretch it over the new steps)")
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise RunDirError(f"cannot resume {str(run_dir)!r} with a different config: "
                              + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    return notes


def prepare_run_dir(cfg: Config, resume: bool, *, rebuild_schedule: bool = False) -> pathlib.Path:
    """Creates the run dir (or checks that resuming it is consistent) and saves config.json."""
    check_run_dir(cfg, resume, rebuild_schedule=rebuild_schedule)
    run_dir = pathlib.Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.json", config_lib.to_json(cfg) + "\n")
    return run_dir


def _current_schema(saved: dict) -> dict:
    """A saved config in today's layout (e.g. ``data.tokenizer: "byte"`` -> its section)."""
    try:
        return config_lib.to_dict(config_lib.from_dict(saved))
    except ConfigError:
        return saved


load_run_config = config_lib.load_run_config


class _StopOnSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and returns."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, nothing to restore
            self._old = {}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def sample_weights_fn(cfg: Config):
    if cfg.mixing.sample_reweight is None:
        return None
    from mixjax.mixing import sample_reweight
    return sample_reweight.get(cfg.mixing.sample_reweight, **cfg.mixing.sample_reweight_hparams)


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
                                      tokens_per_step=cfg.data.batch_size * cfg.data.seq_len)
            self.mixer.init(k)
        except (ValueError, TypeError, KeyError) as e:
            msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
            # a ValueError/TypeError is a mixer's own check of its hyperparameters
            key = "mixing" if isinstance(e, KeyError) else "mixing.hparams"
            raise ConfigError(f"config key {key!r}: {msg}") from e
        self.pad_id = self.data.pad_id
        # The model of model.kind (mixjax.models.registry; default the transformer).
        spec = build_model(cfg, self.data.vocab_size)
        self.model_cfg = spec.config
        self.apply, abstract, self.logical_axes = (spec.apply, spec.abstract_params,
                                                   spec.logical_axes)
        self.init_from = None
        if cfg.model.init_from:   # pretrained parameters (mixjax.train.export, models.hf_io)
            from mixjax.models import hf_io
            from mixjax.train import export
            try:
                params, self.init_from = export.load_init_params(cfg.model.init_from,
                                                                 self.model_cfg, abstract)
            except (hf_io.ExportError, FileNotFoundError) as e:
                raise ConfigError(f"config key 'model.init_from': {e}") from None
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
        jitted = sharding.jit_sharded_step(self.step_fn, self.state_shardings,
                                           frozen_shardings=frozen_sh)
        self.train_step = jitted if self.frozen is None else (
            lambda state, batch: jitted(state, batch, self.frozen))
        self.eval_fn = sharding.replicated_outputs(
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


def whole_batch_on_host() -> bool:
    """One process holds the whole global batch, so its rows can be grouped by domain on
    the host (with several processes each holds a slice and the engine sorts on device)."""
    return jax.process_count() == 1


def _check_stratified(host_batch: dict, cfg: Config, step: int, domains) -> None:
    """The stratified gradient layout's per-batch check, as a ConfigError naming data.sampler."""
    try:
        grads.check_stratified(host_batch["domain_counts"], cfg.data.batch_size, step=step,
                               domains=domains)
    except ValueError as e:
        raise ConfigError(f"config key 'data.sampler' ({cfg.data.sampler!r}): {e}") from e


# Steps whose metrics may wait on the devices between two reads (log steps, evaluations and
# checkpoints read them earlier): bounds the memory and how late a non-finite step is seen.
MAX_PENDING = 32


def batch_maker(trainer: "Trainer") -> Callable[[dict, Any, int], dict]:
    """``(host batch, sampling weights, t) -> the step's batch``, placed on the mesh.

    Runs on the prefetch thread. The target batch (``grads.target``) is the same
    every step: it is placed once and shared by every batch.
    """
    cfg, mesh = trainer.cfg, trainer.mesh
    blocked = trainer.blocked_batches
    target = None
    if trainer.target_tokens is not None:
        target = sharding.replicate_value(np.asarray(trainer.target_tokens), mesh)

    def make(host_batch: dict, p, t: int) -> dict:
        tokens = np.asarray(host_batch["tokens"], np.int32)
        domain_id = np.asarray(host_batch["domain_id"], np.int32)
        # per-sequence sample weights of data.selection.mode=weight (mixjax.data.selection)
        rows = {} if "sample_weight" not in host_batch else {
            "sample_weight": np.asarray(host_batch["sample_weight"], np.float32)}
        if trainer.check_stratified:
            _check_stratified(host_batch, cfg, t, trainer.domains)
            if blocked:   # rows grouped by domain here, so the step only reshapes
                order = grads.block_rows(domain_id)
                tokens, domain_id = tokens[order], domain_id[order]
                rows = {k: v[order] for k, v in rows.items()}
        # This process's rows -> global arrays on the mesh's batch axes.
        batch = sharding.shard_batch({
            "tokens": tokens, "domain_id": domain_id, **rows,
            "sampling_weights": np.asarray(p, np.float32)}, mesh, cfg.data.batch_size)
        if target is not None:
            batch["target_tokens"] = target
        return batch

    return make


def _restore_good_checkpoint(checkpointer: ckpt_lib.Checkpointer, abstract: dict,
                             resume_from: int | None, log: Callable[[str], None]):
    """``(step, state, host, process)`` of the newest intact checkpoint (or ``resume_from``).

    A damaged checkpoint is reported in one line and moved aside (never deleted), and
    the previous one is tried; with ``resume_from`` that checkpoint must be intact and
    newer ones are moved aside so the resumed run can write its own.
    """
    steps = sorted(checkpointer.all_steps(), reverse=True)
    if resume_from is not None:
        if resume_from not in steps:
            raise ckpt_lib.CheckpointError(
                f"--resume-from {resume_from}: no checkpoint {resume_from} in "
                f"{checkpointer.directory}; have {sorted(steps)}")
        state, host, own = checkpointer.restore_verified(resume_from, abstract)
        for s in steps:
            if s > resume_from:
                where = checkpointer.move_aside(s)
                log(f"checkpoint {s} is newer than --resume-from {resume_from}: moved to {where}")
        return resume_from, state, host, own
    for i, s in enumerate(steps):
        try:
            state, host, own = checkpointer.restore_verified(s, abstract)
        except ckpt_lib.CheckpointError as e:
            where = checkpointer.move_aside(s)
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            if nxt is None:
                raise ckpt_lib.CheckpointError(
                    f"{e}; no earlier checkpoint to resume from (moved to {where}); "
                    "start a new run in another run dir") from e
            log(f"{e}; resuming from {nxt} (moved to {where})")
            continue
        return s, state, host, own
    return None


def _check_finite_step(s: int, m: dict, domains: tuple[str, ...], latest: int | None) -> None:
    """Raises NonFiniteLossError if step ``s`` (0-based) had a non-finite loss or gradient norm.

    The message names the step as the files do (``s + 1`` completed steps) and, when
    a domain's own loss is non-finite, the first such domain.
    """
    loss, gnorm = float(m["loss"]), float(m["grad_norm"])
    if np.isfinite(loss) and np.isfinite(gnorm):
        return
    dl = np.asarray(m.get("domain_loss", ()), np.float64)
    counts = np.asarray(m.get("domain_count", np.ones_like(dl)), np.float64)
    culprits = [d for d, v, c in zip(domains, dl, counts) if c > 0 and not np.isfinite(v)]
    where = f" (domain {culprits[0]!r})" if culprits else ""
    raise NonFiniteLossError(
        f"step {s + 1}: non-finite training loss {loss} / gradient norm {gnorm}{where}; "
        f"stopped before writing this step; latest checkpoint: {latest}. Lower optim.lr "
        "or check the data")


def _all_finite(tree) -> bool:
    return bool(jax.device_get(_all_finite_jit(tree)))


@jax.jit
def _all_finite_jit(tree) -> jax.Array:
    # One program and one transfer per checkpoint: a reduction per leaf compiled once
    # per shape and read back one by one cost ~0.7 s at the first checkpoint.
    jnp = jax.numpy
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves \
        else jnp.bool_(True)


def _normalised(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return w / w.sum()


def train(cfg: Config, *, data: TrainData | None = None, resume: bool = False,
          on_step: Callable[[int], None] | None = None, resume_from: int | None = None,
          rebuild_schedule: bool = False, log: Callable[[str], None] | None = None) -> RunResult:
    """Runs (or resumes) the training run ``cfg`` describes; returns a RunResult.

    Nothing is written to the run dir before the config, the run dir, the data, the
    mixer and the sampler are checked and built. ``resume_from``: resume from that
    checkpoint (implies ``resume``; newer checkpoints are moved aside, never deleted).
    ``log``: where one-line notes go (resume point, damaged checkpoints; stderr).
    """
    from mixjax.data.eval_sets import eval_checksum
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
        run_dir = prepare_run_dir(cfg, resume, rebuild_schedule=rebuild_schedule)
        for line in notes:
            log(line)
    run_dir = pathlib.Path(cfg.train.run_dir)
    distributed.barrier("run_dir_ready")
    t_cfg = cfg.train
    domains, mixer = trainer.domains, trainer.mixer
    to_sampler = mixer.apply_to in ("sampling", "both")
    checkpointer = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep=t_cfg.keep_ckpts,
                                         async_save=True)
    state = trainer.initial_state
    start = 0
    got = None
    if resume and checkpointer.all_steps():
        abstract = jax.tree.map(ckpt_lib._abstract, state)   # keeps each array's sharding
        got = _restore_good_checkpoint(checkpointer, abstract, resume_from, log)
    if got is not None:
        latest, state, host, own = got
        start = int(host["step"])
        sampler.set_state((own or host)["sampler"])   # this process's sampler state
        if main:
            metrics_lib.truncate_after(run_dir, start)
            log(f"resumed from step {start} ({checkpointer.directory / str(latest)})")
    elif main:
        # A fresh run starts with fresh logs (a --resume that found no finished checkpoint
        # replaces what its killed predecessor logged, TensorBoard included).
        metrics_lib.clear_logs(run_dir)
    # The weights after the last step whose metrics were read: only to see a change (the
    # mix state owns the weights, the sampler's schedule the sampling history).
    seen_weights = np.asarray(jax.device_get(mixer.weights(state.mix_state)), np.float32)
    if main:
        from mixjax.train import tracking
        writer = metrics_lib.MetricsWriter(run_dir, domains, trackers=tracking.build(
            t_cfg.trackers, t_cfg.tracker_args, run_dir, config_lib.to_dict(cfg), domains))
    else:
        writer = metrics_lib.NullWriter(run_dir, domains)
    if start == 0:
        writer.weights(0, seen_weights)
    run_info = {"num_params": trainer.num_params, "domains": list(domains),
            "model": dataclasses.asdict(trainer.model_cfg), "mixer": mixer.name,
            "apply_to": mixer.apply_to, "requires": sorted(mixer.requires),
            "objective": cfg.train.objective, "heldout_domains": list(trainer.heldout),
            "devices": [str(d) for d in jax.devices()],
            "mesh": dict(trainer.mesh.shape), "processes": jax.process_count(),
            # fingerprint of the eval sets (mixjax.data.eval_sets.eval_checksum):
            # runs are comparable only when it agrees (mixjax compare checks it)
            "eval_sets": {"sha256": getattr(trainer.data, "eval_checksum", None)
                          or eval_checksum(trainer.data.eval_sets,
                                           (getattr(trainer.data, "tokenizer", None)
                                            or {}).get("checksum", cfg.data.tokenizer.kind)),
                          "split": cfg.eval.split, "num_seqs": cfg.eval.num_seqs,
                          "tokenizer": config_lib.to_dict(cfg)["data"]["tokenizer"],
                          "seq_len": cfg.data.seq_len},
            "tokenizer": getattr(trainer.data, "tokenizer", None),
            "data_selection": getattr(trainer.data, "selection", None),
            "init_from": getattr(trainer, "init_from", None),
            "plugins": list(dict.fromkeys(list(cfg.train.plugins) + plugins.loaded())),
            **provenance.collect()}
    if main:
        atomic.write_text(run_dir / "run_info.json", json.dumps(run_info, indent=2))

    pending: list[tuple[int, dict]] = []
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    timer = {"t0": time.perf_counter(), "steps": 0}
    lag = getattr(sampler, "lag", cfg.data.lag)
    # The loop waits for a step's weights only where they feed the sampler and can change.
    gated = to_sampler and trainer.weights_move
    ckpt_every = t_cfg.ckpt_every
    prefetch = BatchPrefetcher(
        sampler, batch_maker(trainer), start=start, end=t_cfg.steps, lag=lag, gated=gated,
        holds=lambda t: bool(ckpt_every) and t % ckpt_every == 0)

    def flush(upto: int) -> None:
        """Reads the metrics of every step <= ``upto``: guards, weights, records."""
        nonlocal seen_weights
        if not pending or pending[0][0] > upto:
            return
        n = next((i for i, (s, _) in enumerate(pending) if s > upto), len(pending))
        fetched = jax.device_get([m for _, m in pending[:n]])   # one transfer for them all
        for (s, _), m in zip(pending[:n], fetched):
            pending.pop(0)
            bad = int(m["nonfinite_domain"])
            if bad >= 0:
                raise mixing.NonFiniteStatsError(
                    f"step {s + 1}: non-finite statistics for domain {domains[bad]!r} (mixer "
                    f"{mixer.name!r}); the weights were not updated. Check the data of "
                    f"{domains[bad]!r} and the learning rate")
            _check_finite_step(s, m, domains, checkpointer.latest_step())
            w = np.asarray(m["weights"], np.float32)
            if not np.array_equal(w, seen_weights):
                writer.weights(s + 1, w)
                if to_sampler:
                    prefetch.set_weights(_normalised(w), step=s)
                seen_weights = w
            prefetch.weights_through(s)
            if (s + 1) % t_cfg.log_every == 0 or s + 1 == t_cfg.steps:
                elapsed = time.perf_counter() - timer["t0"]
                rec = {"step": s + 1, "loss": m["loss"], "objective": m["objective"],
                       "grad_norm": m["grad_norm"], "lr": m.get("lr", 0.0), "tokens": m["tokens"],
                       "tokens_per_s": tokens_per_step * timer["steps"] / max(elapsed, 1e-9)}
                # a domain absent from the batch has no loss: NaN, never 0 (metrics docstring)
                rec.update(writer.per_domain("loss", metrics_lib.absent_as_nan(
                    m["domain_loss"], m["domain_count"])))
                rec.update(writer.per_domain("count", m["domain_count"]))
                rec.update(writer.per_domain("weight", m["weights"]))
                rec.update(writer.per_domain("sampling_weight", m["sampling_weights"]))
                rec.update({k: float(v) for k, v in m.get("extra", {}).items()})
                if "ref_domain_loss" in m:
                    rec.update(writer.per_domain("ref_loss", metrics_lib.absent_as_nan(
                        m["ref_domain_loss"], m["domain_count"])))
                writer.write("metrics.jsonl", rec)
                if bar is not None:
                    # refresh=False: drawn with the next update, at most every mininterval
                    bar.set_postfix(loss=f"{float(m['loss']):.3f}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}", refresh=False)

    def save(step: int) -> None:
        flush(step)
        # Every record up to `step` is on disk before its checkpoint exists: a resume from
        # it replays only later steps, so nothing buffered (tensorboardX queues events
        # for up to 2 min) may be lost to a kill.
        writer.flush()
        if not _all_finite(state.params):   # e.g. a finite gradient times a huge LR
            raise NonFiniteLossError(
                f"step {step}: the parameters became non-finite; not saving a checkpoint "
                f"of them (latest checkpoint: {checkpointer.latest_step()}). "
                "Lower optim.lr or check the data")
        # The sampler has drawn exactly `step` batches here (the prefetcher holds before a
        # checkpoint's batch and drains its queue on a stop).
        assert prefetch.drawn() == step, (prefetch.drawn(), step)
        sampler_state = prefetch.sampler_state()
        # Async: returns once the arrays are off the devices; every process writes its own
        # shards and its own sampler state (process item), process 0 the host JSON.
        checkpointer.save(step, state, {"step": step, "sampler": sampler_state},
                          process={"sampler": sampler_state}, wait=False)
        prefetch.release(step)

    bar = None
    final_eval = None
    stopped = None
    mixer_eval = getattr(mixer, "wants_eval", None)   # done-steps -> bool, or None
    try:
        if start == 0 and "eval_loss" in mixer.requires:
            # A mixer that reads validation losses sees real ones from its first update.
            ev = trainer.evaluate(state.params)
            state = state.replace(eval_loss=sharding.replicate_value(
                eval_lib.domain_losses(ev, domains), trainer.mesh))
            writer.write("eval.jsonl", {"step": 0, **ev})
        if t_cfg.progress:
            from mixjax import progress
            bar = progress.bar(total=t_cfg.steps, initial=start, desc=cfg.name, unit="step")
        with _StopOnSignal() as stop:
            draining = False
            for t in range(start, t_cfg.steps):
                if stop.signum is not None and not draining:
                    # Train on the batches already drawn, then save: the checkpoint's
                    # sampler state is the one after exactly its number of batches.
                    prefetch.stop_drawing()
                    draining = True
                if draining and prefetch.ready() == 0:
                    break
                got_t, batch = prefetch.get()
                state, m = trainer.train_step(state, batch)
                pending.append((t, m))
                timer["steps"] += 1
                if gated:
                    flush(t + 1 - lag)   # w_{t+1-lag} reaches the sampler before batch t + 1
                elif len(pending) > MAX_PENDING or (
                        t_cfg.log_every and (t // t_cfg.log_every) * t_cfg.log_every
                        > pending[0][0]):
                    flush(t - 1)         # a log step (or a full buffer): one step behind
                done = t + 1
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(done)
                on_grid = bool(t_cfg.eval_every) and done % t_cfg.eval_every == 0
                # A mixer may ask for validation losses at its own steps (Aioli's probes,
                # Skill-it's rounds): eval_loss is state, so nothing recompiles.
                on_grid = on_grid or (mixer_eval is not None and bool(mixer_eval(done)))
                if on_grid or done == t_cfg.steps:
                    flush(t)
                    ev = trainer.evaluate(state.params)
                    if on_grid:
                        # Only evaluations on the eval_every grid feed the mixer (eval_loss):
                        # the final one of a shorter run must not change a later resume.
                        state = state.replace(eval_loss=sharding.replicate_value(
                            eval_lib.domain_losses(ev, domains), trainer.mesh))
                    writer.write("eval.jsonl", {"step": done, **ev})
                    final_eval = ev
                if (ckpt_every and done % ckpt_every == 0) or done == t_cfg.steps:
                    save(done)
            stopped = stop.signum
            done = int(jax.device_get(state.step))
            if stopped is not None and checkpointer.latest_step() != done:
                save(done)
            flush(done)
    finally:
        prefetch.close()
        if bar is not None:
            bar.close()
        writer.close()
        checkpointer.close()
    return RunResult(run_dir=run_dir, steps_done=done, interrupted=stopped is not None,
                     signal=stopped, final_eval=final_eval, state=state)


def evaluate_run(run_dir: str | pathlib.Path, *, step: int | None = None,
                 split: str | None = None, num_seqs: int | None = None,
                 data: TrainData | None = None) -> dict:
    """Evaluates checkpoint ``step`` (latest when None) of a run on its eval sets."""
    run_dir = pathlib.Path(run_dir)
    cfg = load_run_config(run_dir)
    if split is not None:
        cfg.eval.split = split
    if num_seqs is not None:
        cfg.eval.num_seqs = num_seqs
    config_lib.validate(cfg)
    data = data if data is not None else build_data(cfg)
    domains = tuple(data.domains)
    spec = build_model(cfg, data.vocab_size)
    apply, abstract_params = spec.apply, spec.abstract_params
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    step = ck.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"run dir {str(run_dir)!r} has no checkpoint")
    try:
        params = ckpt_lib.restore_params(ck.manager, step, abstract_params)
    except Exception as e:   # a missing or damaged checkpoint: one line naming it
        ck.close()
        raise ckpt_lib.CheckpointError(f"run dir {str(run_dir)!r}: checkpoint {step} cannot be "
                                       f"read: {ckpt_lib._first_line(e)}") from e
    ck.close()
    heldout = tuple(getattr(data, "heldout_domains", ()))
    batches = eval_lib.prepare_eval_sets(data.eval_sets, domains + heldout, cfg.eval.num_seqs,
                                         cfg.eval.batch_size, data.pad_id)
    result = eval_lib.evaluate_with_heldout(step_lib.make_eval_fn(apply, data.pad_id), params,
                                            batches, domains, heldout,
                                            cfg.eval.target_mixture)
    return {"step": step, "split": cfg.eval.split, **result}


def format_eval(result: dict, domains: tuple[str, ...]) -> str:
    """A plain-text table of an evaluation result."""
    lines = [f"{'domain':<16} {'loss':>8} {'ppl':>10}"]
    for d in domains:
        lines.append(f"{d:<16} {result[f'loss/{d}']:>8.4f} {result[f'ppl/{d}']:>10.3f}")
    lines.append(f"{'uniform avg':<16} {result['loss_avg']:>8.4f} {result['ppl_avg']:>10.3f}")
    lines.append(f"{'target avg':<16} {result['loss_target']:>8.4f} {result['ppl_target']:>10.3f}")
    lines.append(f"{'worst':<16} {'':>8} {result['ppl_worst']:>10.3f}")
    for d in sorted(k[len("loss/"):] for k in result if k.startswith("loss/")):
        if d not in domains:   # held out: evaluated, not trained on, not in the averages
            lines.append(f"{d + ' (held out)':<16} {result[f'loss/{d}']:>8.4f} "
                         f"{result[f'ppl/{d}']:>10.3f}")
    return "\n".join(lines)
