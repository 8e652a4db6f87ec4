"""An orbax checkpoint item written by *every* process: one JSON file per process.

Orbax's ``JsonSave`` writes from the primary process only, which is right for
job-wide values (the step) and wrong for per-process ones: on
a multi-host run each process's data sampler reads its own share of every
domain, so each has its own iterator state. This item stores
``<step>/<item>/process_<i>-of-<n>.json`` (the layout grain uses for its
iterators) and restores the calling process's file; restoring with another
process count is refused with a clear error, since per-process data positions
cannot be re-split.

    ocp.args.Composite(..., process=ProcessJsonSave({"sampler": sampler.get_state()}))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def _filename(directory: epath.Path, index: int, count: int) -> epath.Path:
    return directory / f"process_{index}-of-{count}.json"


class ProcessJsonHandler(ocp.CheckpointHandler):
    """Saves/restores one JSON-serialisable value per process."""

    def save(self, directory: epath.Path, args: "ProcessJsonSave") -> None:
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _filename(directory, jax.process_index(), jax.process_count()).write_text(
            json.dumps(args.item, indent=1, sort_keys=True))

    def restore(self, directory: epath.Path, args: "ProcessJsonRestore | None" = None) -> Any:
        directory = epath.Path(directory)
        path = _filename(directory, jax.process_index(), jax.process_count())
        if not path.exists():
            saved = sorted(p.name for p in directory.glob("process_*.json"))
            raise FileNotFoundError(
                f"{path} does not exist: this checkpoint holds per-process states {saved}, "
                f"and this run has {jax.process_count()} process(es); per-process data "
                "positions can only be restored with the process count that saved them")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> Any:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass
