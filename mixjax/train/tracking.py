"""Experiment trackers: where a run's metrics are mirrored besides its JSONL files.

The JSONL files (mixjax.train.metrics) stay the source of truth; a tracker
receives the same records and shows them in its UI. ``train.trackers`` picks
them (default ``("tensorboard",)``); ``train.tracker_args[name]`` configures one.

* ``tensorboard``: event files under ``<run_dir>/tb`` (tensorboardX); view with
  ``tensorboard --logdir <run_dir>/tb`` (``pip install 'mixjax[tensorboard]'``).
* ``wandb``: Weights & Biases (``pip install 'mixjax[wandb]'``). Args:
  ``project`` (default ``mixjax``), ``entity``, ``name`` (default: the config
  name and run dir), ``mode`` (default ``offline``: files under
  ``<run_dir>/wandb``, upload later with ``wandb sync``; ``online`` needs
  ``wandb login``), ``tags``. The run's config is the W&B config, per-domain
  metrics are ``train/loss/<domain>``..., domain weights ``weights/<domain>``
  (line plots) and every evaluation also logs a table ``eval/table``
  (domain, loss, ppl, weight). A resumed run continues the same W&B run (its
  id is kept in ``<run_dir>/wandb_id.txt``).

A tracker implements ``log(group, step, record)``, ``weights(step, {domain: w})``
and ``close()``; :data:`TRACKERS` maps names to factories
``(run_dir, cfg_dict, domains, **args) -> Tracker``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import pathlib
from typing import Any, Callable, Mapping

TRACKER_EXTRAS = {"tensorboard": ("tensorboardX", "pip install 'mixjax[tensorboard]'"),
                  "wandb": ("wandb", "pip install 'mixjax[wandb]'")}
WANDB_ARGS = ("project", "entity", "name", "mode", "tags")


class Tracker:
    def log(self, group: str, step: int, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def weights(self, step: int, weights: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _scalars(record: Mapping[str, Any]):
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


class EventWriter:
    """TensorBoard scalars, written synchronously (``add_scalar``/``flush``/``close``).

    tensorboardX's ``SummaryWriter`` hands events to a background thread through a
    queue that its ``flush`` does not drain, so a kill loses events that the JSONL
    files already hold, even of steps before the checkpoint a resume starts from.
    This writer uses tensorboardX's own pieces (``EventsWriter``: TFRecord framing,
    CRCs, fsync on flush; ``summary.scalar``'s tag cleaning) in the calling thread, so ``flush``
    makes every event durable. The file name ends with the process id: two writers
    started in the same second (a quick resume) never share a file.
    """

    def __init__(self, logdir: str | pathlib.Path):
        from tensorboardX.event_file_writer import EventsWriter
        os.makedirs(logdir, exist_ok=True)
        self._writer = EventsWriter(os.path.join(str(logdir), "events"), f".{os.getpid()}")
        self._tags: dict[str, str] = {}

    def _tag(self, tag: str) -> str:
        """tensorboardX's cleaned name of ``tag`` (``summary.scalar`` cleans every call; the
        same few dozen tags recur every record, so the name is cleaned once)."""
        got = self._tags.get(tag)
        if got is None:
            from tensorboardX.summary import scalar
            got = self._tags[tag] = scalar(tag, 0.0).value[0].tag
        return got

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Every ``tag: value`` of one step in one event (one record, one CRC pass, instead
        of one per scalar: a per-domain record is ~3x cheaper to write; readers see the
        same scalars, ``mixjax.train.metrics.read_tensorboard_scalars``)."""
        import time

        from tensorboardX.proto import event_pb2, summary_pb2
        if not values:
            return
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=self._tag(tag), simple_value=float(x))
            for tag, x in values.items()])
        self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                 summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoardTracker(Tracker):
    """Scalars ``<group>/<key>`` and ``weights/<domain>`` in ``<run_dir>/tb``."""

    def __init__(self, run_dir, cfg: Mapping | None = None, domains=()):
        # Synchronous writer: flush makes every event durable and a resume can trim it.
        self._tb = EventWriter(pathlib.Path(run_dir) / "tb")

    def log(self, group, step, record):
        self._tb.add_scalars({f"{group}/{key}": value for key, value in _scalars(record)}, step)

    def weights(self, step, weights):
        self._tb.add_scalars({f"weights/{d}": x for d, x in weights.items()}, step)

    def flush(self):
        self._tb.flush()

    def close(self):
        self._tb.close()


class WandbTracker(Tracker):
    """A W&B run (see the module docstring)."""

    def __init__(self, run_dir, cfg: Mapping | None = None, domains=(), *, project: str = "mixjax",
                 entity: str | None = None, name: str | None = None, mode: str = "offline",
                 tags=None):
        import wandb
        run_dir = pathlib.Path(run_dir)
        self.domains = tuple(domains)
        self._weights: dict[str, float] = {}    # the latest weights, for the eval table
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        default_name = f"{(cfg or {}).get('name', 'run')}:{run_dir.name}"
        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, name=name or default_name,
                              config=dict(cfg or {}), dir=str(run_dir), mode=mode, id=run_id,
                              resume="allow", tags=list(tags) if tags else None,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, group, step, record):
        self.run.log({f"{group}/{k}": v for k, v in _scalars(record)}, step=int(step))
        if group == "eval":
            table = self._wandb.Table(columns=["domain", "loss", "ppl", "weight"])
            for key in record:
                if key.startswith("loss/"):
                    d = key[len("loss/"):]
                    table.add_data(d, record[key], record.get(f"ppl/{d}"), self._weights.get(d))
            self.run.log({"eval/table": table}, step=int(step))

    def weights(self, step, weights):
        self._weights = {d: float(x) for d, x in weights.items()}
        self.run.log({f"weights/{d}": x for d, x in self._weights.items()}, step=int(step))

    def close(self):
        self.run.finish()


TRACKERS: dict[str, Callable[..., Tracker]] = {"tensorboard": TensorBoardTracker,
                                               "wandb": WandbTracker}


def check(names, args: Mapping[str, Mapping[str, Any]], installed: bool = False) -> str | None:
    """An error message for unknown trackers or bad args (and, with ``installed``, trackers
    whose package is missing), or None. Runs before anything is built."""
    for name in names:
        if name not in TRACKERS:
            return f"unknown tracker {name!r}; known: {sorted(TRACKERS)}"
        module, hint = TRACKER_EXTRAS[name]
        if installed and importlib.util.find_spec(module) is None:
            return f"tracker {name!r} needs the {module!r} package: {hint}"
    for name, a in args.items():
        if name not in names:
            return f"train.tracker_args has {name!r}, which is not in train.trackers {list(names)}"
        if not isinstance(a, Mapping):
            return f"train.tracker_args[{name!r}] must be a dict, got {a!r}"
        if name == "tensorboard" and a:
            return f"train.tracker_args['tensorboard'] takes no arguments, got {sorted(a)}"
        if name == "wandb":
            bad = sorted(set(a) - set(WANDB_ARGS))
            if bad:
                return f"train.tracker_args['wandb']: unknown key(s) {bad}; known: {list(WANDB_ARGS)}"
            if a.get("mode", "offline") not in ("offline", "online", "disabled"):
                return "train.tracker_args['wandb']['mode'] must be offline, online or disabled"
    return None


def build(names, args: Mapping[str, Mapping[str, Any]], run_dir, cfg: Mapping,
          domains) -> list[Tracker]:
    return [TRACKERS[n](run_dir, cfg, domains, **dict(args.get(n, {}))) for n in names]
