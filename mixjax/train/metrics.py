"""Run logs: JSONL files (the source of truth) mirrored to TensorBoard.

Files in the run directory:

* ``metrics.jsonl``: one record per logged train step (``step`` = number of
  completed steps), per-domain values as ``loss/<domain>``, ``weight/<domain>``...
* ``eval.jsonl``: one record per evaluation (per-domain loss and perplexity,
  averages).
* ``weights.jsonl``: ``{"step", "weights": {domain: w}}`` every step the
  mixer's weights change (and at step 0), i.e. the weight trajectory.
* ``tb/``: TensorBoard event files (tensorboardX) with the same scalars, and
  whatever other trackers ``train.trackers`` names (mixjax.train.tracking).

On resume from step ``k`` the records of steps after ``k`` (written by the
interrupted run after its last checkpoint) are dropped first, so every file
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import numpy as np

FILES = ("metrics.jsonl", "eval.jsonl", "weights.jsonl")


def _plain(x: Any) -> Any:
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _plain(x.item()) if x.ndim == 0 else [_plain(v) for v in x.tolist()]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(run_dir: pathlib.Path, step: int) -> None:
    """Drops records with ``step > step`` from the run's JSONL files."""
    for name in FILES:
        path = run_dir / name
        if path.exists():
            keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))


class MetricsWriter:
    def __init__(self, run_dir: str | pathlib.Path, domains: tuple[str, ...],
                 tensorboard: bool = True, trackers=None):
        self.run_dir = pathlib.Path(run_dir)
        self.domains = tuple(domains)
        self._files = {name: open(self.run_dir / name, "a") for name in FILES}
        self._tb = None
        # trackers=None: TensorBoard only (if `tensorboard`); else exactly the given ones
        if trackers is None and tensorboard:
            from mixjax.train.tracking import TensorBoardTracker
            trackers = [TensorBoardTracker(self.run_dir)]
        self._trackers = list(trackers or [])

    def per_domain(self, prefix: str, values) -> dict[str, float]:
        return {f"{prefix}/{d}": float(v) for d, v in zip(self.domains, np.asarray(values))}

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        record = _plain(dict(record))
        self._files[name].write(json.dumps(record) + "\n")
        self._files[name].flush()
        if name != "weights.jsonl":
            for t in self._trackers:
                t.log(name.split(".")[0], record["step"], record)

    def weights(self, step: int, weights) -> None:
        w = {d: float(x) for d, x in zip(self.domains, np.asarray(weights))}
        self.write("weights.jsonl", {"step": step, "weights": w})
        for t in self._trackers:
            t.weights(step, w)

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
        for t in self._trackers:
            getattr(t, "flush", lambda: None)()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        for t in self._trackers:
            t.close()


class NullWriter(MetricsWriter):
    """The writer of processes other than 0 on a multi-host run: computes, writes nothing."""

    def __init__(self, run_dir: str | pathlib.Path, domains: tuple[str, ...]):
        self.run_dir = pathlib.Path(run_dir)
        self.domains = tuple(domains)
        self._files, self._tb, self._trackers = {}, None, []

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        pass

    def weights(self, step: int, weights) -> None:
        pass
