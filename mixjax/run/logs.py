"""Run logs and run info: JSONL files (trimmed on resume), trackers, ``run_info.json``.

A job's logs read as one uninterrupted run: on resume from checkpoint ``k`` the
records of steps after ``k`` (what the killed process wrote after its last
checkpoint) are dropped first, atomically; a fresh start (no checkpoint) clears
them. Every record up to a checkpoint's step is fsynced before that checkpoint is
written (the engine flushes the writer before each save).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

from mixjax import provenance
from mixjax import atomic
from mixjax.train import metrics as metrics_lib


def open_logs(run_dir: str | pathlib.Path, domains=(), *, resumed_step: int | None,
              files: tuple[str, ...] = metrics_lib.FILES, trackers=None,
              main: bool = True) -> metrics_lib.MetricsWriter:
    """The job's writer, after trimming its logs to ``resumed_step`` (None: clearing them).

    ``trackers``: None gives TensorBoard (``tb/``), a list exactly those trackers, a
    callable ``() -> list`` is called after the trim (a tracker may open its files).
    ``main``: False (a process other than 0) writes and trims nothing.
    """
    run_dir = pathlib.Path(run_dir)
    if not main:
        return metrics_lib.NullWriter(run_dir, tuple(domains))
    if resumed_step is None:
        metrics_lib.clear_logs(run_dir, files)
    else:
        metrics_lib.truncate_after(run_dir, resumed_step, files)
    if callable(trackers):
        trackers = trackers()
    return metrics_lib.MetricsWriter(run_dir, tuple(domains), trackers=trackers, files=files)


def write_run_info(run_dir: str | pathlib.Path, info: Mapping[str, Any],
                   name: str = "run_info.json") -> dict:
    """``info`` plus what produced the run (:func:`mixjax.provenance.collect`), atomically."""
    rec = {**info, **provenance.collect()}
    atomic.write_text(pathlib.Path(run_dir) / name, json.dumps(rec, indent=2))
    return rec
