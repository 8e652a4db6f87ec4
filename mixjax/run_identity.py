"""One run identity: which config keys change a result, one hash, one "finished" marker.

Every command that trains a config *or reuses the run it already finished* (``mixjax
compare``'s grid, the ``mixjax mix`` phases and shared baselines, ``mixjax search``'s
target runs, the jobs of ``mixjax dg sweep``) asks this module, so they agree on when
two configs are the same run:

* :data:`NEUTRAL_KEYS`: the keys that never change what a run computes (where it writes,
  how it reports, how often it checkpoints). Everything else is part of the identity.
* :func:`config_hash`: sha256 of the resolved config without the neutral keys.
* :func:`train_or_reuse`: reuse the finished run in ``run_dir`` (its :data:`MARKER`
  names the config hash it finished with) or train it and write the marker.

Sits low on purpose: it imports only the config module and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Callable

from mixjax import atomic
from mixjax import config as config_lib
from mixjax.errors import ConfigError

# Keys that do not change what a run computes. Each was checked against the loop: the data
# stream is a function of (seed, weight history) only, checkpoints resume bit for bit, and
# metrics are read on log steps without feeding back into the step.
NEUTRAL_KEYS: tuple[str, ...] = (
    "name",                 # the label of the run (tables, tracker names)
    "train.run_dir",        # where it writes
    "train.progress",       # the tqdm bar
    "train.log_every",      # how often metrics.jsonl gets a line
    "train.ckpt_every",     # checkpoint cadence (a resume is bit for bit, tests/test_train_resume.py)
    "train.keep_ckpts",     # how many checkpoints are kept
    "train.ckpt_defer",     # whether the loop waits for a save's device->host copy (same files)
    "train.trackers",       # where metrics are mirrored (TensorBoard, W&B)
    "train.tracker_args",
    "train.plugins",        # where out-of-tree code is imported from (its names are in the config)
    "data.cache_dir",       # where tokenized data is cached (keyed by content, not by path)
    "data.token_store",     # documents read from a pre-tokenised store: the same batches
    "data.prefetch",        # batches drawn on a thread or inline: the same batches
)
# Not neutral, on purpose: train.eval_every (eval_loss feeds eval-driven mixers),
# eval.batch_size (summation order of the eval loss that feeds them), mesh.* (sharding
# changes float summation order), data.workers (grain's worker split of the stream), seeds,
# train.steps (the LR schedule and the budget).

# Mixers whose step reads no ``grads.*`` key with the default objective (static mixtures):
# their runs leave the ``grads`` section out of the hash, so a DoGE and a DoReMi config
# share one baseline run. A name not listed only makes the hash stricter, never looser.
STATIC_MIXERS: tuple[str, ...] = ("uniform", "natural", "manual", "temperature")

MARKER = "finished.json"          # {"config_hash": ..., "record": {...}} in a finished run dir
# A DG sweep job's directory is named by its identity (DomainBed's md5 of the job's
# arguments), and its marker is DomainBed's `done` (DomainBed's collect_results reads it).
JOB_MARKER = "done"
LEGACY_MARKERS = ("result.json",)   # `mix` phases and `search` targets before MARKER


class RunIdentityError(ConfigError):
    """A run dir holds a finished run of another config (exit code 2, names the dir)."""


def identity_dict(cfg) -> dict:
    """The config as a dict without the neutral keys (what :func:`config_hash` hashes)."""
    d = config_lib.to_dict(cfg)
    for key in NEUTRAL_KEYS:
        *parents, last = key.split(".")
        node = d
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    # mesh.expert (added later) at its default 1 leaves the hash of every earlier run as it was
    if isinstance(d.get("mesh"), dict) and d["mesh"].get("expert") == 1:
        d["mesh"].pop("expert")
    default_objective = config_lib.TrainConfig().objective
    if cfg.mixing.name in STATIC_MIXERS and cfg.train.objective == default_objective:
        d.pop("grads", None)
    return d


def digest(obj: Any, algorithm: str = "sha256") -> str:
    """Hex digest of the sorted-key JSON of ``obj`` (``default=str`` for paths, tuples...)."""
    return hashlib.new(algorithm, json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(cfg) -> str:
    """sha256 of the resolved config without :data:`NEUTRAL_KEYS` (and without ``grads`` for
    a static mixer, which reads none of it)."""
    return digest(identity_dict(cfg))


def mark_finished(run_dir: str | os.PathLike, identity: str, record: Any = None) -> pathlib.Path:
    """Writes ``run_dir/finished.json`` (atomically): the identity it finished with and a record."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / MARKER
    atomic.write_text(path, json.dumps({"config_hash": identity, "record": record}, indent=2,
                                       default=str) + "\n")
    return path


def mark_job_done(job_dir: str | os.PathLike) -> pathlib.Path:
    """Writes a DG job's marker (DomainBed's ``done``; the identity is the dir's name)."""
    path = pathlib.Path(job_dir) / JOB_MARKER
    atomic.write_text(path, "done")
    return path


def read_marker(run_dir: str | os.PathLike) -> dict | None:
    """``{"config_hash", "record"}`` of a finished run dir, or None. Reads the markers written
    before there was one (``result.json`` of `mix`/`search` runs: hash None, the file is the
    record) and DG jobs' ``done`` (hash None, record None)."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / MARKER
    if path.is_file():
        return json.loads(path.read_text())
    for name in LEGACY_MARKERS:
        if (run_dir / name).is_file():
            return {"config_hash": None, "record": json.loads((run_dir / name).read_text())}
    if (run_dir / JOB_MARKER).is_file():
        return {"config_hash": None, "record": None}
    return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    return read_marker(run_dir) is not None


def saved_config_hash(run_dir: str | os.PathLike) -> str | None:
    """:func:`config_hash` of the config a run dir's ``config.json`` holds (None: none there)."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        return config_hash(config_lib.from_dict(json.loads(path.read_text())))
    except ConfigError:      # a config of an older layout: nothing to compare against
        return None


def train_or_reuse(cfg, run_dir: str | os.PathLike,
                   train_fn: Callable[..., Any], *,
                   legacy: Callable[[pathlib.Path], Any] | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[Any, bool]:
    """The record of the finished run of ``cfg`` in ``run_dir``: ``(record, reused)``.

    A run dir whose marker names this config's hash is reused (``train_fn`` is not called);
    one that finished with another config raises :class:`RunIdentityError`. Otherwise
    ``train_fn(resume)`` trains (``resume``: the dir already holds a started run) and returns
    a JSON-able record, and the marker is written. ``legacy(run_dir)``, when given, decides
    about a dir finished before markers existed (a record, or None: not finished); its saved
    ``config.json`` must still hash like ``cfg``.
    """
    run_dir = pathlib.Path(run_dir)
    h = config_hash(cfg)
    found = read_marker(run_dir)
    if found is None and legacy is not None:
        record = legacy(run_dir)
        if record is not None:
            found = {"config_hash": None, "record": record}
    if found is not None:
        stored = found.get("config_hash") or saved_config_hash(run_dir)
        if stored is not None and stored != h:
            raise RunIdentityError(f"{run_dir} holds a finished run of another config (config "
                                   f"hash {stored[:12]}, this one {h[:12]}); remove it or pick "
                                   "another output directory")
        if found.get("config_hash") is None:      # finished before the marker held the hash
            mark_finished(run_dir, h, found.get("record"))
        if log is not None:
            log(f"reusing {run_dir} (finished run, same config)")
        return found.get("record"), True
    record = train_fn((run_dir / "config.json").is_file())
    mark_finished(run_dir, h, record)
    return record, False


def adopt_equivalent(cfg, run_dir: str | os.PathLike, pattern: str,
                     log: Callable[[str], None] | None = None) -> pathlib.Path | None:
    """A run dir named by an older hash (one that counted other keys as neutral) is renamed
    to ``run_dir`` when its saved config has this config's identity: ``run_dir`` does not
    exist and a sibling matching ``pattern`` (a glob in ``run_dir``'s parent) holds such a
    run. Returns the old path, or None. Nothing is deleted."""
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() or not run_dir.parent.is_dir():
        return None
    h = config_hash(cfg)
    for old in sorted(run_dir.parent.glob(pattern)):
        if old == run_dir or not old.is_dir() or (old / MARKER).is_file():
            continue            # a marker names today's identity: not an older name
        if saved_config_hash(old) == h:
            os.rename(old, run_dir)
            if log is not None:
                log(f"{old} holds a run of this config (named by an older config hash): "
                    f"renamed to {run_dir}")
            return old
    return None
