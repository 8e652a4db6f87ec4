"""Run logs: JSONL files (the source of truth) mirrored to TensorBoard.

Files in the run directory:

* ``metrics.jsonl``: one record per logged train step (``step`` = number of
  completed steps), per-domain values as ``loss/<domain>``, ``weight/<domain>``...
  A domain with no tokens in the step's batch (``count/<domain>`` 0) has no
  loss: ``loss/<domain>`` (and ``ref_loss/<domain>``) is then ``"nan"`` (the
  string, as every non-finite value is written; ``float()`` reads it back as
  NaN) meaning *absent*, never 0, and no TensorBoard point is written. Readers
  averaging curves must skip these (``numpy.nanmean``).
* ``eval.jsonl``: one record per evaluation (per-domain loss and perplexity,
  averages).
* ``weights.jsonl``: ``{"step", "weights": {domain: w}}`` every step the
  mixer's weights change (and at step 0), i.e. the weight trajectory.
* ``tb/``: TensorBoard event files (tensorboardX) with the same scalars (one event
  per record), and whatever other trackers ``train.trackers`` names
  (mixjax.train.tracking). ``weights.jsonl`` is written in batches, on log steps,
  evaluations and checkpoints; the trackers' ``weights/<domain>`` get the latest
  change at that cadence (:class:`MetricsWriter`).

On resume from step ``k`` the records of steps after ``k`` (written by the
interrupted run after its last checkpoint) are dropped first, from the JSONL
files and the TensorBoard event files alike, so every file reads as one
uninterrupted run. Each such rewrite is atomic (:mod:`mixjax.atomic`), and
an unfinished last line (what a crash in the middle of a write leaves) is
ignored by the readers and dropped by the rewrite.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from mixjax import atomic

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


class LogFileError(ValueError):
    """A run log holds a malformed line that is not an unfinished last one."""


def absent_as_nan(values, counts) -> np.ndarray:
    """``values`` with NaN where ``counts`` is 0 (a domain absent from the batch has no loss)."""
    v = np.asarray(values, np.float64).copy()
    v[np.asarray(counts) == 0] = np.nan
    return v


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    """The records of a JSONL log; an unfinished last line (no newline) is ignored.

    Records are appended as ``json + "\\n"``, so a write cut short leaves a last
    line without its newline; any other malformed line is an error naming it.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):   # the last piece had no newline: a torn write
                break
            raise LogFileError(f"{path}:{i}: malformed log record ({e.msg})") from None
    return records


def truncate_after(run_dir: pathlib.Path, step: int, files: tuple[str, ...] = FILES) -> None:
    """Drops records with ``step > step`` from the run's logs (JSONL ``files`` and TensorBoard).

    Each file is replaced atomically; a torn last line is dropped.
    """
    for name in files:
        path = run_dir / name
        if path.exists():
            keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    trim_tensorboard(run_dir / "tb", step)


def clear_logs(run_dir: pathlib.Path, files: tuple[str, ...] = FILES) -> None:
    """Removes the run's JSONL logs and TensorBoard event files (a fresh start)."""
    for name in files:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "tb").is_dir():
        for path in _event_files(run_dir / "tb"):
            path.unlink()


def _event_files(tb_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in tb_dir.glob("events.out.tfevents.*") if p.is_file())


def read_tensorboard_scalars(tb_dir: str | pathlib.Path) -> list[tuple[str, int, float]]:
    """Every scalar ``(tag, step, value)`` in a TensorBoard dir, file by file, in order."""
    from tensorboard.backend.event_processing import event_file_loader
    out = []
    for path in _event_files(pathlib.Path(tb_dir)):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            for v in event.summary.value:   # the loader gives scalars as 0-d tensors
                value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
                out.append((v.tag, int(event.step), float(value)))
    return out


def trim_tensorboard(tb_dir: pathlib.Path, step: int) -> None:
    """Drops events with ``step > step`` from every event file (each replaced atomically).

    Read with TensorBoard's raw reader (which stops at a torn last record); the kept
    records are written back byte for byte with tensorboardX's record framing, under
    the same file name.
    """
    if not tb_dir.is_dir():
        return
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2
    from tensorboardX.record_writer import RecordWriter
    for path in _event_files(tb_dir):
        records = list(event_file_loader.RawEventFileLoader(str(path)).Load())
        keep = [r for r in records if event_pb2.Event.FromString(r).step <= step]
        if len(keep) == len(records) and path.stat().st_size == _framed_size(records):
            continue
        tmp = path.with_name(f".{path.name}.tmp")   # outside the events.out.* pattern
        writer = RecordWriter(str(tmp))
        for r in keep:
            writer.write(r)
        writer.flush()   # flushes and fsyncs
        writer.close()
        os.replace(tmp, path)
        atomic.fsync_dir(tb_dir)


def _framed_size(records: list[bytes]) -> int:
    """Bytes of the records in TFRecord framing (8-byte length, 4-byte CRC, data, 4-byte CRC)."""
    return sum(16 + len(r) for r in records)


class MetricsWriter:
    """Writes a run's JSONL logs and mirrors them to the trackers.

    An online mixer changes its weights every step, so ``weights`` only buffers:
    the buffered ``weights.jsonl`` lines go to the file in one write with the next
    record of another log (``metrics.jsonl`` on log steps, ``eval.jsonl``), on
    ``flush`` (every checkpoint) and on ``close``, so the file holds every change
    and nothing is formatted or written per step. The trackers get ``weights`` at
    that cadence too, with the latest change only (``weights/<domain>`` in
    TensorBoard: one point per log record; every log record also carries
    ``weight/<domain>``); ``weights.jsonl`` stays the full trajectory.
    """

    def __init__(self, run_dir: str | pathlib.Path, domains: tuple[str, ...],
                 tensorboard: bool = True, trackers=None, files: tuple[str, ...] = FILES):
        self.run_dir = pathlib.Path(run_dir)
        self.domains = tuple(domains)
        self._files = {name: open(self.run_dir / name, "a") for name in files}
        # trackers=None: TensorBoard only (if `tensorboard`); else exactly the given ones
        if trackers is None and tensorboard:
            from mixjax.train.tracking import TensorBoardTracker
            trackers = [TensorBoardTracker(self.run_dir)]
        self._trackers = list(trackers or [])
        self._weights_lines: list[str] = []          # weights.jsonl lines not yet written
        self._weights_latest: tuple[int, dict] | None = None   # for the trackers

    def per_domain(self, prefix: str, values) -> dict[str, float]:
        return {f"{prefix}/{d}": float(v) for d, v in zip(self.domains, np.asarray(values))}

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        self._write_weights()
        record = _plain(dict(record))
        self._files[name].write(json.dumps(record) + "\n")
        self._files[name].flush()
        if name != "weights.jsonl":
            for t in self._trackers:
                t.log(name.split(".")[0], record["step"], record)

    def weights(self, step: int, weights) -> None:
        """Records the weights in force from ``step`` on (buffered: see the class docstring)."""
        values = np.asarray(weights, np.float64)
        w = dict(zip(self.domains, values.tolist()))
        # finite floats are plain JSON already; _plain only for the non-finite (as strings)
        plain = w if np.isfinite(values).all() else _plain(w)
        self._weights_lines.append(json.dumps({"step": int(step), "weights": plain}) + "\n")
        self._weights_latest = (int(step), w)

    def _write_weights(self) -> None:
        if self._weights_lines:
            f = self._files["weights.jsonl"]
            f.write("".join(self._weights_lines))
            f.flush()
            self._weights_lines.clear()
        if self._weights_latest is not None:
            step, w = self._weights_latest
            self._weights_latest = None
            for t in self._trackers:
                t.weights(step, w)

    def flush(self) -> None:
        """Writes every buffered record and event through to the disk (fsync)."""
        self._write_weights()
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        for t in self._trackers:
            getattr(t, "flush", lambda: None)()

    def close(self) -> None:
        self._write_weights()
        for f in self._files.values():
            f.close()
        for t in self._trackers:
            t.close()


class NullWriter(MetricsWriter):
    """The writer of processes other than 0 on a multi-host run: computes, writes nothing."""

    def __init__(self, run_dir: str | pathlib.Path, domains: tuple[str, ...]):
        self.run_dir = pathlib.Path(run_dir)
        self.domains = tuple(domains)
        self._files, self._trackers = {}, []
        self._weights_lines, self._weights_latest = [], None   # flush/close find nothing

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        pass

    def weights(self, step: int, weights) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
