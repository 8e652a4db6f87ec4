"""Training a swarm: the proxy axis as a client of the run engine (:mod:`mixjax.run.engine`).

The engine gives the swarm what every long job gets: batches drawn and placed on a
background thread, SIGTERM/SIGINT -> checkpoint and clean exit, resume from the
newest intact checkpoint (falling back to the previous one), and ``metrics.jsonl``
trimmed to the restored step, so a swarm killed between checkpoints and resumed
logs every step once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable

import numpy as np

from mixjax.parallel import distributed
from mixjax.run import checkpoints as run_ckpt
from mixjax.run import engine, feeds, logs
from mixjax.run.signals import Interrupted
from mixjax.train import checkpoint as ckpt_lib

LOGS = ("metrics.jsonl",)


@dataclasses.dataclass
class SwarmResult:
    losses: np.ndarray          # float64[P, K'] final per-domain eval loss (K' incl. held out)
    eval_domains: tuple[str, ...]
    alive: np.ndarray           # bool[P]
    died_at: np.ndarray         # int[P] (-1: alive)
    steps: int
    seconds: float
    history: list               # [(step, float[P, K'])] evaluations on the eval_every grid
    # wall seconds per phase of this call (init, batches = waiting for the prefetch thread,
    # first_step = compile + one step, steps, eval, checkpoint); measured with the device
    # synchronised at phase ends only where the loop already waits (logging, eval,
    # checkpoint), so "steps" includes the asynchronous device time of the steps it overlapped
    timings: dict = dataclasses.field(default_factory=dict)


class SwarmClient(engine.Client):
    """The swarm's step, its per-proxy loss records and its evaluations on the grid."""

    def __init__(self, swarm, step, writer, *, total: int, log_every: int, history: list):
        self.swarm, self._step, self.writer = swarm, step, writer
        self.total, self.log_every, self.history = total, log_every, history

    def step(self, state, batch):
        return self._step(state, batch)

    def after_step(self, t, state, m) -> None:
        done = t + 1
        if done % self.log_every == 0 or done == self.total:
            loss = np.asarray(distributed.fetch(m["loss"]), np.float64)
            alive = np.asarray(distributed.fetch(state["alive"]))
            self.writer.write("metrics.jsonl", {
                "step": done, "loss_mean_alive": float(loss[alive].mean()) if alive.any()
                else None, "alive": int(alive.sum()),
                "loss": [None if not np.isfinite(x) else float(x) for x in loss]})

    def evaluate(self, state, done: int, on_grid: bool):
        if on_grid and done != self.total:   # the final evaluation is train_swarm's
            self.history.append((done, self.swarm.evaluate(state)))
        return state

    def host_state(self, done: int) -> dict:
        return {"history": [(s, np.asarray(v).tolist()) for s, v in self.history]}


def train_swarm(swarm, out_dir: str | pathlib.Path, *, steps: int | None = None,
                ckpt_every: int | None = None, eval_every: int | None = None,
                progress: bool = False, log: Callable[[str], None] | None = None,
                stop_after: int | None = None) -> SwarmResult:
    """Trains the swarm (a :class:`mixjax.search.swarm.Swarm`) for ``steps``
    (cfg.train.steps), resuming from ``out_dir``'s latest intact checkpoint if there is
    one; evaluates every proxy at the end.

    ``out_dir`` holds ``checkpoints/`` (orbax: the stacked state + the data stream's
    state, so a resumed swarm continues bit for bit), ``metrics.jsonl`` (mean and
    per-proxy train loss every ``log_every`` steps) and ``result.json``.
    ``stop_after``: checkpoint and return after that many steps of this call.
    Raises :class:`mixjax.run.signals.Interrupted` when SIGTERM/SIGINT stopped it (after the
    checkpoint; nothing is evaluated, so no caller fits or saves a half-trained swarm).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = swarm.cfg
    steps = cfg.train.steps if steps is None else steps
    ckpt_every = cfg.train.ckpt_every if ckpt_every is None else ckpt_every
    eval_every = cfg.train.eval_every if eval_every is None else eval_every
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    state = swarm.init_state()
    batches = swarm.make_batches()
    ck = ckpt_lib.Checkpointer(out / "checkpoints", keep=1)
    start, history = 0, []
    writer = None
    try:
        got = run_ckpt.resume(ck, state, log=log)
        if got is not None:
            state, start = swarm.place(got.state), got.step
            batches.set_state(got.sampler)
            history = [(s, np.asarray(v)) for s, v in got.host.get("history", [])]
            log(f"swarm: resumed at step {start} from {out / 'checkpoints'}")
        writer = logs.open_logs(out, resumed_step=None if got is None else start, files=LOGS,
                                trackers=[], main=distributed.is_main_process())
        if distributed.is_main_process():
            logs.write_run_info(out, run_info(swarm))
        step = swarm.train_step()
        ckpt_at = feeds.every(ckpt_every)
        stop_at = None if stop_after is None else start + stop_after
        # the thread draws and places batch t + 1 while step t runs; it holds before a
        # checkpoint's batch (and before the stop_after one) until the state is saved.
        # Inline (data.prefetch; "auto" on CPU): the loop draws it after dispatching step t.
        feed = feeds.InlineFeed(batches, lambda host, t: swarm.device_batch(host), start=start) \
            if feeds.draws_inline(cfg.data.prefetch) else \
            feeds.PrefetchFeed(batches, lambda host, p, t: swarm.device_batch(host),
                               start=start, end=steps, weighted=False,
                               holds=lambda t: ckpt_at(t) or t == stop_at)
        bar = None
        if progress:
            from mixjax import progress as progress_lib
            bar = progress_lib.bar(total=steps, initial=start,
                                   desc=f"swarm x{swarm.num_proxies}", unit="step")
        client = SwarmClient(swarm, step, writer, total=steps,
                             log_every=max(cfg.train.log_every, 1), history=history)
        t_init = time.perf_counter() - t0
        res = engine.run_steps(client, state, feed, start=start, total=steps, checkpointer=ck,
                               writer=writer, ckpt_at=ckpt_at, eval_at=feeds.every(eval_every),
                               stop_after=stop_after, bar=bar)
    finally:
        if writer is not None:
            writer.close()
        ck.close()
    state, done = res.state, res.done
    if res.signal is not None:
        raise Interrupted(f"swarm stopped by signal {res.signal} at step {done} of {steps}; "
                          "the same command resumes it", res.signal)
    timings = {"init": t_init, **res.timings}
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


def run_info(swarm) -> dict:
    """What ``run_info.json`` says of a swarm (provenance is added when it is written)."""
    import jax
    return {"kind": "swarm", "proxies": swarm.num_proxies,
            "params_per_proxy": swarm.params_per_proxy, "domains": list(swarm.domains),
            "route": swarm.route, "strategy": swarm.strategy,
            "model": dataclasses.asdict(swarm.model_cfg),
            "devices": [str(d) for d in jax.devices()],
            "mesh": None if swarm.mesh is None else dict(swarm.mesh.shape),
            "processes": jax.process_count()}


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
