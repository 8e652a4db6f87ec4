"""The step loop every long job runs, and the client contract.

::

    for t in range(start, total):
        (a stop -- SIGTERM/SIGINT or stop_after -- stops drawing; the batches already
         drawn are trained on, then the job checkpoints and returns)
        batch = feed.next()
        state, metrics = client.step(state, batch)
        client.after_step(t, state, metrics)      # its records (read late or now)
        bar / on_step(done)
        eval_at(done) or done == total  -> state = client.evaluate(state, done, on_grid)
        ckpt_at(done) or done == total  -> save(done)

``save(done)``: ``client.flush(done)`` (every record up to ``done`` read and
written), the writer fsynced, ``client.check_saveable`` (e.g. finite parameters),
then one checkpoint ``{state, host: {step, sampler: feed.state(),
**client.host_state(done)}}`` (the feed holds exactly ``done`` batches) and
``feed.release(done)``. The caller restores (:func:`mixjax.run.checkpoints.resume`),
opens the logs trimmed to the restored step (:func:`mixjax.run.logs.open_logs`) and
closes the writer and checkpointer; the engine closes the feed and the bar.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mixjax.run.feeds import Feed
from mixjax.run.signals import StopOnSignal


class Client:
    """What a job supplies; every hook but :meth:`step` has a do-nothing default."""

    def step(self, state, batch) -> tuple[Any, Any]:
        """The compiled step: ``(state, batch) -> (state, metrics)`` (dispatched async)."""
        raise NotImplementedError

    def after_step(self, t: int, state, metrics) -> None:
        """Step ``t`` (0-based) was dispatched: keep or write its metrics."""

    def flush(self, upto: int) -> None:
        """Read and write every record of steps ``< upto`` completed (before a save/eval)."""

    def evaluate(self, state, done: int, on_grid: bool):
        """An evaluation after ``done`` steps (``on_grid``: on the eval cadence, else the
        final one); returns the (possibly updated) state."""
        return state

    def check_saveable(self, state, done: int) -> None:
        """Raise to refuse a checkpoint of ``state`` (e.g. non-finite parameters)."""

    def host_state(self, done: int) -> dict:
        """Extra JSON saved in the checkpoint's host item (besides ``step`` and ``sampler``)."""
        return {}


@dataclasses.dataclass
class Outcome:
    state: Any
    done: int                       # completed steps
    signal: int | None              # the signal that stopped the job, if one did
    stopped: bool                   # stopped early (a signal or stop_after)
    timings: dict


def all_finite(tree) -> bool:
    """Every floating leaf of ``tree`` finite (one program, one transfer)."""
    return bool(jax.device_get(_all_finite_jit(tree)))


@jax.jit
def _all_finite_jit(tree) -> jax.Array:
    # One program and one transfer per checkpoint: a reduction per leaf compiled once
    # per shape and read back one by one cost ~0.7 s at the first checkpoint.
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves \
        else jnp.bool_(True)


def run_steps(client: Client, state, feed: Feed, *, start: int, total: int, checkpointer,
              writer=None, ckpt_at: Callable[[int], bool] = lambda done: False,
              eval_at: Callable[[int], bool] = lambda done: False,
              stop_after: int | None = None, on_step: Callable[[int], None] | None = None,
              bar=None, wait: bool = False) -> Outcome:
    """Runs steps ``start .. total - 1`` of ``client`` (module docstring); returns the Outcome.

    ``checkpointer``: a :class:`mixjax.train.checkpoint.Checkpointer` (None: no
    checkpoints, the job only flushes its records at the save points); ``wait=False``
    returns from a save once the arrays are off the devices (async checkpointers).
    ``stop_after``: stop as on a signal after that many steps of this call.
    ``timings`` (seconds): ``batches`` (waiting for the feed), ``first_step`` (compile
    and the first step), ``steps`` (dispatch and ``after_step``), ``eval``, ``checkpoint``.
    """
    timings = {k: 0.0 for k in ("batches", "first_step", "steps", "eval", "checkpoint")}

    def save(done: int) -> None:
        tc = time.perf_counter()
        client.flush(done)
        # Every record up to `done` is on disk before its checkpoint exists: a resume from
        # it replays only later steps, so nothing buffered may be lost to a kill.
        if writer is not None:
            writer.flush()
        client.check_saveable(state, done)
        if checkpointer is None:
            return
        # The feed has drawn exactly `done` batches here (it holds before a checkpoint's
        # batch and drains its queue on a stop).
        assert feed.drawn() == done, (feed.drawn(), done)
        data = feed.state()
        checkpointer.save(done, state, {"step": done, "sampler": data, **client.host_state(done)},
                          process={"sampler": data}, wait=wait)
        feed.release(done)
        timings["checkpoint"] += time.perf_counter() - tc

    done, stopped = start, False
    try:
        with StopOnSignal() as stop:
            draining = False
            for t in range(start, total):
                if not draining and (stop.signum is not None or (
                        stop_after is not None and t - start >= stop_after)):
                    # Train on the batches already drawn, then save: the checkpoint's
                    # data state is the one after exactly its number of batches.
                    feed.stop_drawing()
                    draining = True
                if draining and feed.ready() == 0:
                    break
                tb = time.perf_counter()
                batch = feed.next()
                ts = time.perf_counter()
                timings["batches"] += ts - tb
                state, m = client.step(state, batch)
                if t == start:    # compilation + the first step
                    jax.block_until_ready(m)
                    timings["first_step"] += time.perf_counter() - ts
                    ts = time.perf_counter()
                client.after_step(t, state, m)
                timings["steps"] += time.perf_counter() - ts
                done = t + 1
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(done)
                on_grid = bool(eval_at(done))
                if on_grid or done == total:
                    te = time.perf_counter()
                    client.flush(done)
                    state = client.evaluate(state, done, on_grid)
                    timings["eval"] += time.perf_counter() - te
                if ckpt_at(done) or done == total:
                    save(done)
            stopped = draining
            if stopped and checkpointer is not None and checkpointer.latest_step() != done:
                save(done)
            client.flush(done)
    finally:
        feed.close()
        if bar is not None:
            bar.close()
    return Outcome(state=state, done=done, signal=stop.signum, stopped=stopped,
                   timings=timings)
