"""The LM trainer as a client of the run engine (:mod:`mixjax.run.engine`).

It supplies the step (``Trainer.train_step``), its metrics' late reads
(``flush``: guards, weights handed to the sampler, records), the evaluation that
feeds ``eval_loss`` and the finiteness check before a checkpoint; the engine runs
the loop, the signals, the checkpoints and the logs.

Metrics are read in bulk, late: before batch ``t + lag`` when the weights feed the
sampler and can change (``gated``), else on log, eval and checkpoint steps (or
when :data:`MAX_PENDING` steps wait). Flushing step ``s`` raises
NonFiniteStatsError if the mixer saw a non-finite statistic, writes
metrics.jsonl / TensorBoard, and, when the weights changed, appends to
weights.jsonl and (apply_to sampling/both) calls ``set_weights(w_s, step=s)`` on
the feed, which the sampler applies from batch ``s + lag``.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from mixjax import mixing
from mixjax.parallel import step_sharding
from mixjax.run import engine
from mixjax.train import evaluate as eval_lib
from mixjax.train import metrics as metrics_lib
from mixjax.train.metric_pack import MetricPacker

# Steps whose metrics may wait on the devices between two reads (log steps, evaluations and
# checkpoints read them earlier): bounds the memory and how late a non-finite step is seen.
MAX_PENDING = 32


class NonFiniteLossError(mixing.NonFiniteStatsError):
    """The training loss or gradient norm became non-finite: the run stops there.

    Raised for every mixer (static ones included) before the step's record is
    written or a checkpoint of its state is saved, so the run's files and its
    latest checkpoint end at the last finite step.
    """


def normalised(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return w / w.sum()


def check_finite_step(s: int, m: dict, domains: tuple[str, ...],
                      latest: Callable[[], int | None]) -> None:
    """Raises NonFiniteLossError if step ``s`` (0-based) had a non-finite loss or gradient norm.

    The message names the step as the files do (``s + 1`` completed steps) and, when
    a domain's own loss is non-finite, the first such domain; ``latest()``, the latest
    checkpoint's step, is asked only then (it lists the checkpoint directory).
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
        f"stopped before writing this step; latest checkpoint: {latest()}. Lower optim.lr "
        "or check the data")


class LMClient(engine.Client):
    """One LM run (a ``Trainer``) on the engine; ``feed`` is its PrefetchFeed or SamplerFeed."""

    def __init__(self, trainer, feed, writer, checkpointer, *, seen_weights, lag: int,
                 gated: bool, bar=None):
        self.trainer, self.feed, self.writer = trainer, feed, writer
        self.checkpointer, self.bar = checkpointer, bar
        cfg = trainer.cfg
        self.t_cfg = cfg.train
        self.domains, self.mixer = trainer.domains, trainer.mixer
        self.to_sampler = self.mixer.apply_to in ("sampling", "both")
        # The weights after the last step whose metrics were read: only to see a change
        # (the mix state owns the weights, the sampler's schedule the sampling history).
        self.seen_weights = seen_weights
        self.lag, self.gated = lag, gated
        # (step, its metrics packed for one transfer: mixjax.train.metric_pack)
        self.pending: list[tuple[int, tuple]] = []
        self.packer = MetricPacker()
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.t0, self.steps = time.perf_counter(), 0
        self.final_eval = None
        self.mixer_eval = getattr(self.mixer, "wants_eval", None)   # done-steps -> bool

    # -- the engine's hooks ----------------------------------------------------------
    def step(self, state, batch):
        return self.trainer.train_step(state, batch)

    def after_step(self, t, state, m) -> None:
        self.pending.append((t, self.packer.pack(m)))
        self.steps += 1
        log_every = self.t_cfg.log_every
        if self.gated:
            self._flush(t + 1 - self.lag)   # w_{t+1-lag} reaches the sampler before batch t+1
        elif len(self.pending) > MAX_PENDING or (
                log_every and (t // log_every) * log_every > self.pending[0][0]):
            self._flush(t - 1)              # a log step (or a full buffer): one step behind

    def eval_at(self, done: int) -> bool:
        on_grid = bool(self.t_cfg.eval_every) and done % self.t_cfg.eval_every == 0
        # A mixer may ask for validation losses at its own steps (Aioli's probes,
        # Skill-it's rounds): eval_loss is state, so nothing recompiles.
        return on_grid or (self.mixer_eval is not None and bool(self.mixer_eval(done)))

    def flush(self, upto: int) -> None:
        self._flush(upto - 1)

    def evaluate(self, state, done: int, on_grid: bool):
        ev = self.trainer.evaluate(state.params)
        if on_grid:
            # Only evaluations on the eval grid feed the mixer (eval_loss): the final
            # one of a shorter run must not change a later resume.
            state = self.set_eval_loss(state, ev)
        self.writer.write("eval.jsonl", {"step": done, **ev})
        self.final_eval = ev
        return state

    def set_eval_loss(self, state, ev):
        return state.replace(eval_loss=step_sharding.replicate_value(
            eval_lib.domain_losses(ev, self.domains), self.trainer.mesh))

    def check_saveable(self, state, done: int) -> None:
        if not engine.all_finite(state.params):   # e.g. a finite gradient times a huge LR
            raise NonFiniteLossError(
                f"step {done}: the parameters became non-finite; not saving a checkpoint "
                f"of them (latest checkpoint: {self.checkpointer.latest_step()}). "
                "Lower optim.lr or check the data")

    # -- the late reads --------------------------------------------------------------
    def _flush(self, upto: int) -> None:
        """Reads the metrics of every step <= ``upto`` (0-based): guards, weights, records."""
        pending = self.pending
        if not pending or pending[0][0] > upto:
            return
        n = next((i for i, (s, _) in enumerate(pending) if s > upto), len(pending))
        fetched = self.packer.read([m for _, m in pending[:n]])   # one transfer for them all
        domains, mixer, writer = self.domains, self.mixer, self.writer
        for (s, _), m in zip(pending[:n], fetched):
            pending.pop(0)
            bad = int(m["nonfinite_domain"])
            if bad >= 0:
                raise mixing.NonFiniteStatsError(
                    f"step {s + 1}: non-finite statistics for domain {domains[bad]!r} (mixer "
                    f"{mixer.name!r}); the weights were not updated. Check the data of "
                    f"{domains[bad]!r} and the learning rate")
            check_finite_step(s, m, domains, self.checkpointer.latest_step)
            w = np.asarray(m["weights"], np.float32)
            if not np.array_equal(w, self.seen_weights):
                writer.weights(s + 1, w)
                if self.to_sampler:
                    self.feed.set_weights(normalised(w), step=s)
                self.seen_weights = w
            self.feed.weights_through(s)
            if (s + 1) % self.t_cfg.log_every == 0 or s + 1 == self.t_cfg.steps:
                self._record(s, m)

    def _record(self, s: int, m: dict) -> None:
        writer = self.writer
        elapsed = time.perf_counter() - self.t0
        rec = {"step": s + 1, "loss": m["loss"], "objective": m["objective"],
               "grad_norm": m["grad_norm"], "lr": m.get("lr", 0.0), "tokens": m["tokens"],
               "tokens_per_s": self.tokens_per_step * self.steps / max(elapsed, 1e-9)}
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
        if self.bar is not None:
            # refresh=False: drawn with the next update, at most every mininterval
            self.bar.set_postfix(loss=f"{float(m['loss']):.3f}",
                                 tok_s=f"{rec['tokens_per_s']:.0f}", refresh=False)
