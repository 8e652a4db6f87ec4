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
import os
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax import distributed, mixing, parallel
from mixjax.config import Config, ConfigError
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import evaluate as eval_lib
from mixjax.train import metrics as metrics_lib
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train.data import TrainData, build_data

# Keys that may differ between a run's saved config and the one it is resumed with.
RESUMABLE_CHANGES = ("train.steps", "train.progress", "train.log_every", "train.eval_every",
                     "train.ckpt_every", "train.keep_ckpts",
                     # a checkpoint restores onto any mesh (tests/test_checkpoint_reshard.py)
                     "mesh.data", "mesh.fsdp", "mesh.tensor")


class RunDirError(ValueError):
    """The run directory already holds a run (resume it or pick another)."""


@dataclasses.dataclass
class RunResult:
    run_dir: pathlib.Path
    steps_done: int
    interrupted: bool
    signal: int | None
    final_eval: dict | None
    state: Any = None


def model_config(cfg: Config, vocab_size: int):
    from mixjax.models.transformer import TransformerConfig
    return TransformerConfig(vocab_size=vocab_size, **dataclasses.asdict(cfg.model))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("hparams", "sample_reweight_hparams", "target_mixture",
                                              "objective_hparams"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def prepare_run_dir(cfg: Config, resume: bool) -> pathlib.Path:
    """Creates the run dir, or checks that resuming it is consistent."""
    run_dir = pathlib.Path(cfg.train.run_dir)
    saved = run_dir / "config.json"
    holds_run = saved.exists() or (run_dir / "checkpoints").exists()
    if holds_run and not resume:
        raise RunDirError(f"run dir {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or set train.run_dir to a new directory")
    if holds_run:
        old = _flatten(json.loads(saved.read_text())) if saved.exists() else {}
        new = _flatten(config_lib.to_dict(cfg))
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise RunDirError(f"cannot resume {str(run_dir)!r} with a different config: "
                              + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(config_lib.to_json(cfg) + "\n")
    return run_dir


def load_run_config(run_dir: str | pathlib.Path) -> Config:
    path = pathlib.Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no config.json)")
    return config_lib.from_dict(json.loads(path.read_text()))


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


def load_reference(run_dir: str, vocab_size: int):
    """``(apply, params)`` of the latest checkpoint of a reference run."""
    from mixjax.models import transformer
    ref_cfg = load_run_config(run_dir)
    mcfg = model_config(ref_cfg, vocab_size)
    apply, abstract_params, _ = transformer.abstract_init(mcfg)
    ck = ckpt_lib.Checkpointer(pathlib.Path(run_dir) / "checkpoints")
    step = ck.latest_step()
    if step is None:
        raise FileNotFoundError(f"reference run {run_dir!r} has no checkpoint")
    got = ck.manager.restore(step, args=_params_only_args(abstract_params))
    ck.close()
    return apply, got["state"]["params"]


def _params_only_args(abstract_params):
    import orbax.checkpoint as ocp
    return ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, partial_restore=True))


def sample_weights_fn(cfg: Config):
    if cfg.mixing.sample_reweight is None:
        return None
    from mixjax.mixing import sample_reweight
    return sample_reweight.get(cfg.mixing.sample_reweight, **cfg.mixing.sample_reweight_hparams)


class Trainer:
    """Everything a run needs, built from a Config (before anything compiles)."""

    def __init__(self, cfg: Config, data: TrainData | None = None):
        config_lib.validate(cfg)
        self.cfg = cfg
        self.data = data if data is not None else build_data(cfg)
        self.domains = tuple(self.data.domains)
        config_lib.check_domains(cfg, self.domains)
        k = len(self.domains)
        try:
            self.mixer = mixing.build(cfg.mixing.name, cfg.mixing.hparams, domains=self.domains,
                                      token_counts=self.data.token_counts,
                                      apply_to=cfg.mixing.apply_to, total_steps=cfg.train.steps,
                                      tokens_per_step=cfg.data.batch_size * cfg.data.seq_len)
        except (ValueError, TypeError) as e:   # a mixer's own checks of its hyperparameters
            raise ConfigError(f"config key 'mixing.hparams': {e}") from e
        self.pad_id = self.data.pad_id
        from mixjax.models import transformer
        self.model_cfg = model_config(cfg, self.data.vocab_size)
        self.apply, params, self.logical_axes = transformer.init(self.model_cfg, cfg.train.seed)
        self.num_params = transformer.count_params(params)
        self.tx, self.schedule = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
        # The step and its state come from the objective's factory (train.objective):
        # the default one-model mixer step, or a custom one (bilevel, fish).
        from mixjax.train import objectives
        parts = objectives.build(cfg.train.objective, self)
        self.mixer = parts.mixer
        self.step_fn = parts.step_fn
        self.check_stratified = parts.stratified
        self.target_tokens = self._target_tokens() if parts.needs_target else None
        # Mesh (mixjax.parallel): params and optimizer state sharded by the logical rules,
        # everything else replicated; the jitted step keeps that layout in and out.
        self.mesh = parallel.mesh_from_config(cfg.mesh)
        distributed.check_batch_divides(cfg.data.batch_size, self.mesh,
                                        parallel.batch_axes(self.mesh))
        # The optimizer and mixer state are created sharded (one jitted init), so no
        # device ever holds the whole optimizer state; same values as an eager init.
        self.initial_state, self.state_shardings = parallel.init_state_sharded(
            parts.init_fn, params, self.logical_axes, self.mesh, ref_params=parts.ref_params)
        self.train_step = parallel.jit_sharded_step(self.step_fn, self.state_shardings)
        self.eval_fn = parallel.replicated_outputs(
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
        if target is None or target not in self.domains + heldout:
            raise ConfigError(f"config key 'grads.target': {self.mixer.name!r} needs a target "
                              f"domain (its validation split gives the target batch); got "
                              f"{target!r}; training domains: {list(self.domains)}")
        target_sets = getattr(self.data, "target_sets", None) or {}
        if target in target_sets:
            return np.asarray(target_sets[target])[:cfg.eval.num_seqs]
        return np.asarray(self.data.eval_sets[target])[:cfg.eval.num_seqs]

    def sampler_weights(self) -> np.ndarray:
        """The sampler's initial weights: the mixer's (sampling/both) or the reference p (loss)."""
        if self.mixer.apply_to == "loss":
            if self.cfg.mixing.sampling_weights == "uniform":
                return np.full(len(self.domains), 1.0 / len(self.domains))
            n = np.asarray(self.data.token_counts, np.float64)
            return n / n.sum()
        return _normalised(self.mixer.weights(self.initial_state["mix_state"]))

    def evaluate(self, params) -> dict:
        return eval_lib.evaluate_with_heldout(self.eval_fn, params, self.eval_batches,
                                              self.domains, self.heldout,
                                              self.cfg.eval.target_mixture)


def _normalised(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return w / w.sum()


def train(cfg: Config, *, data: TrainData | None = None, resume: bool = False,
          on_step: Callable[[int], None] | None = None) -> RunResult:
    """Runs (or resumes) the training run ``cfg`` describes; returns a RunResult."""
    config_lib.validate(cfg)
    run_dir = pathlib.Path(cfg.train.run_dir)
    if (run_dir / "config.json").exists() and not resume:
        prepare_run_dir(cfg, resume)  # raises before anything is built
    trainer = Trainer(cfg, data)
    main = distributed.is_main_process()   # multi-host: process 0 writes the run files
    distributed.barrier("run_dir_checked")  # every process checked before process 0 writes
    if main:
        run_dir = prepare_run_dir(cfg, resume)
    distributed.barrier("run_dir_ready")
    t_cfg = cfg.train
    domains, mixer = trainer.domains, trainer.mixer
    to_sampler = mixer.apply_to in ("sampling", "both")
    checkpointer = ckpt_lib.Checkpointer(run_dir / "checkpoints", keep=t_cfg.keep_ckpts,
                                         async_save=True)
    sampler = trainer.data.make_sampler(trainer.sampler_weights())
    state = trainer.initial_state
    start = 0
    last_weights = np.asarray(mixer.weights(state["mix_state"]), np.float32)
    latest = checkpointer.latest_step() if resume else None
    if latest is not None:
        abstract = jax.tree.map(ckpt_lib._abstract, state)   # keeps each array's sharding
        restored, host = checkpointer.restore(latest, abstract)
        if "ref_params" in state:
            restored["ref_params"] = state["ref_params"]
        state = restored
        start = int(host["step"])
        own = checkpointer.restore_process(latest)   # this process's sampler state
        sampler.set_state((own or host)["sampler"])
        last_weights = np.asarray(host["last_weights"], np.float32)
        if main:
            metrics_lib.truncate_after(run_dir, start)
    elif main:
        for name in metrics_lib.FILES:  # a fresh run starts with fresh logs
            (run_dir / name).unlink(missing_ok=True)
    writer = (metrics_lib.MetricsWriter(run_dir, domains) if main
              else metrics_lib.NullWriter(run_dir, domains))
    if start == 0:
        writer.weights(0, last_weights)
    with open(run_dir / "run_info.json" if main else os.devnull, "w") as f:
        json.dump({"num_params": trainer.num_params, "domains": list(domains),
                   "model": dataclasses.asdict(trainer.model_cfg), "mixer": mixer.name,
                   "apply_to": mixer.apply_to, "requires": sorted(mixer.requires),
                   "objective": cfg.train.objective, "heldout_domains": list(trainer.heldout),
                   "devices": [str(d) for d in jax.devices()],
                   "mesh": dict(trainer.mesh.shape), "processes": jax.process_count()},
                  f, indent=2)

    target_tokens = None if trainer.target_tokens is None else np.asarray(trainer.target_tokens)
    pending: list[tuple[int, dict]] = []
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    timer = {"t0": time.perf_counter(), "steps": 0}

    def flush(upto: int) -> None:
        nonlocal last_weights
        while pending and pending[0][0] <= upto:
            s, m = pending.pop(0)
            m = jax.device_get(m)
            bad = int(m["nonfinite_domain"])
            if bad >= 0:
                raise mixing.NonFiniteStatsError(
                    f"step {s + 1}: non-finite statistics for domain {domains[bad]!r} (mixer "
                    f"{mixer.name!r}); the weights were not updated. Check the data of "
                    f"{domains[bad]!r} and the learning rate")
            w = np.asarray(m["weights"], np.float32)
            if not np.array_equal(w, last_weights):
                writer.weights(s + 1, w)
                if to_sampler:
                    sampler.set_weights(_normalised(w), step=s)
                last_weights = w
            if (s + 1) % t_cfg.log_every == 0 or s + 1 == t_cfg.steps:
                elapsed = time.perf_counter() - timer["t0"]
                rec = {"step": s + 1, "loss": m["loss"], "objective": m["objective"],
                       "grad_norm": m["grad_norm"], "lr": m.get("lr", 0.0), "tokens": m["tokens"],
                       "tokens_per_s": tokens_per_step * timer["steps"] / max(elapsed, 1e-9)}
                rec.update(writer.per_domain("loss", m["domain_loss"]))
                rec.update(writer.per_domain("count", m["domain_count"]))
                rec.update(writer.per_domain("weight", m["weights"]))
                rec.update(writer.per_domain("sampling_weight", m["sampling_weights"]))
                rec.update({k: float(v) for k, v in m.get("extra", {}).items()})
                if "ref_domain_loss" in m:
                    rec.update(writer.per_domain("ref_loss", m["ref_domain_loss"]))
                writer.write("metrics.jsonl", rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(m['loss']):.3f}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}")

    def save(step: int) -> None:
        flush(step)
        sampler_state = sampler.get_state()
        # Async: returns once the arrays are off the devices; every process writes its own
        # shards and its own sampler state (process item), process 0 the host JSON.
        checkpointer.save(step, state, {"step": step, "sampler": sampler_state,
                                        "last_weights": [float(x) for x in last_weights]},
                          process={"sampler": sampler_state}, wait=False)

    if start == 0 and "eval_loss" in mixer.requires:
        # A mixer that reads validation losses sees real ones from its first update.
        ev = trainer.evaluate(state["params"])
        state["eval_loss"] = parallel.replicate_value(eval_lib.domain_losses(ev, domains),
                                                      trainer.mesh)
        writer.write("eval.jsonl", {"step": 0, **ev})

    bar = None
    if t_cfg.progress:
        from tqdm import tqdm
        # Redrawn 10x/s on a terminal; every 30 s in a log file (cluster jobs, CI).
        bar = tqdm(total=t_cfg.steps, initial=start, desc=cfg.name, unit="step",
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    final_eval = None
    stopped = None
    lag = getattr(sampler, "lag", cfg.data.lag)
    mixer_eval = getattr(mixer, "wants_eval", None)   # done-steps -> bool, or None
    try:
        with _StopOnSignal() as stop:
            t = start
            for t in range(start, t_cfg.steps):
                if stop.signum is not None:
                    break
                flush(t - lag)
                p = np.asarray(sampler.weights_for(t), np.float32)
                host_batch = next(sampler)
                # host arrays: parallel.shard_batch places them on the mesh below
                batch = {"tokens": np.asarray(host_batch["tokens"], np.int32),
                         "domain_id": np.asarray(host_batch["domain_id"], np.int32),
                         "sampling_weights": p}
                if trainer.check_stratified:
                    from mixjax import grads
                    grads.check_stratified(host_batch["domain_counts"], cfg.data.batch_size,
                                           step=t, domains=domains)
                if trainer.target_tokens is not None:
                    batch["target_tokens"] = target_tokens
                # This process's rows -> global arrays on the mesh's batch axes.
                batch = parallel.shard_batch(batch, trainer.mesh, cfg.data.batch_size)
                state, m = trainer.train_step(state, batch)
                pending.append((t, m))
                timer["steps"] += 1
                flush(t - 1)
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
                    ev = trainer.evaluate(state["params"])
                    if on_grid:
                        # Only evaluations on the eval_every grid feed the mixer (eval_loss):
                        # the final one of a shorter run must not change a later resume.
                        state["eval_loss"] = parallel.replicate_value(
                            eval_lib.domain_losses(ev, domains), trainer.mesh)
                    writer.write("eval.jsonl", {"step": done, **ev})
                    final_eval = ev
                if (t_cfg.ckpt_every and done % t_cfg.ckpt_every == 0) or done == t_cfg.steps \
                        or stop.signum is not None:
                    save(done)
                if stop.signum is not None:
                    break
            stopped = stop.signum
            done = int(jax.device_get(state["step"]))
            if stopped is not None and checkpointer.latest_step() != done:
                save(done)
            flush(done)
    finally:
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
    from mixjax.models import transformer
    run_dir = pathlib.Path(run_dir)
    cfg = load_run_config(run_dir)
    if split is not None:
        cfg.eval.split = split
    if num_seqs is not None:
        cfg.eval.num_seqs = num_seqs
    config_lib.validate(cfg)
    data = data if data is not None else build_data(cfg)
    domains = tuple(data.domains)
    apply, abstract_params, _ = transformer.abstract_init(model_config(cfg, data.vocab_size))
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    step = ck.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"run dir {str(run_dir)!r} has no checkpoint")
    params = ck.manager.restore(step, args=_params_only_args(abstract_params))["state"]["params"]
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
