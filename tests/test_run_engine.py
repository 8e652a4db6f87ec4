"""The run engine (mixjax/run/): its layering, and its loop on a toy client (a counter
state, no model): checkpoint cadence, stop_after, exact resume with trimmed logs."""

import sys
import pathlib

import jax.numpy as jnp
import numpy as np

from mixjax.run import checkpoints as run_ckpt
from mixjax.run import engine, feeds, logs
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import metrics as metrics_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_import_graph import import_graph  # noqa: E402

ALLOWED = {"mixjax.train.checkpoint", "mixjax.train.metrics", "mixjax.train.tracking",
           "mixjax.atomic", "mixjax.train.prefetch", "mixjax.train.process_json",
           "mixjax.progress", "mixjax.provenance", "mixjax"}


def test_engine_imports_no_client():
    graph = import_graph()
    engine_mods = [m for m in graph if m == "mixjax.run" or m.startswith("mixjax.run.")]
    assert len(engine_mods) >= 5
    for mod in engine_mods:
        outside = {d for d in graph[mod] if not d.startswith("mixjax.run")}
        assert outside <= ALLOWED, (mod, outside - ALLOWED)


class Counter:
    """A data stream whose batch t is t + 1 (its state: the next t)."""

    def __init__(self, t=0):
        self.t = t

    def __next__(self):
        self.t += 1
        return self.t

    def get_state(self):
        return {"t": self.t}


class Toy(engine.Client):
    def __init__(self, writer):
        self.writer, self.evals = writer, []

    def step(self, state, batch):
        return {"x": state["x"] + batch}, {"x": state["x"] + batch}

    def after_step(self, t, state, m):
        self.writer.write("metrics.jsonl", {"step": t + 1, "x": float(m["x"])})

    def evaluate(self, state, done, on_grid):
        self.evals.append((done, on_grid))
        return state


def run(out, total, stop_after=None, prefetch=False):
    ck = ckpt_lib.Checkpointer(out / "checkpoints", keep=2)
    state = {"x": jnp.zeros((), jnp.float32)}
    got = run_ckpt.resume(ck, state)
    start = 0 if got is None else got.step
    stream = Counter(0 if got is None else got.sampler["t"])
    state = state if got is None else got.state
    writer = logs.open_logs(out, resumed_step=None if got is None else start,
                            files=("metrics.jsonl",), trackers=[])
    ckpt_at = feeds.every(3)
    stop_at = None if stop_after is None else start + stop_after
    feed = (feeds.PrefetchFeed(stream, lambda b, p, t: b, start=start, end=total,
                               weighted=False, holds=lambda t: ckpt_at(t) or t == stop_at)
            if prefetch else feeds.InlineFeed(stream, start=start))
    client = Toy(writer)
    try:
        outcome = engine.run_steps(client, state, feed, start=start, total=total,
                                   checkpointer=ck, writer=writer, ckpt_at=ckpt_at,
                                   eval_at=feeds.every(4), stop_after=stop_after)
    finally:
        writer.close()
        ck.close()
    return outcome, client


def test_loop_checkpoints_evaluates_stops_and_resumes(tmp_path):
    ref, _ = run(tmp_path / "ref", 10)
    assert ref.done == 10 and float(ref.state["x"]) == sum(range(1, 11))
    for prefetch in (False, True):
        out = tmp_path / f"run{prefetch}"
        part, client = run(out, 10, stop_after=5, prefetch=prefetch)
        assert (part.done, part.stopped) == (5, True)
        assert client.evals == [(4, True)]
        assert ckpt_lib.Checkpointer(out / "checkpoints").all_steps() == [3, 5]
        # a killed process's records after the checkpoint: dropped on resume
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 6, "x": -1.0}\n{"step": 7, "x": -1.0}\n')
        rest, client = run(out, 10)
        assert client.evals == [(8, True), (10, False)]
        assert rest.done == 10 and not rest.stopped
        np.testing.assert_array_equal(np.asarray(rest.state["x"]), np.asarray(ref.state["x"]))
        assert metrics_lib.read_jsonl(out / "metrics.jsonl") == \
            metrics_lib.read_jsonl(tmp_path / "ref" / "metrics.jsonl")
