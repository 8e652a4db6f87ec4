"""Checkpoints of a run: orbax ``CheckpointManager`` under ``RUN_DIR/checkpoints``.

Each checkpoint ``checkpoints/<step>/`` holds two items:

* ``state``: the whole train-state pytree (params, optimiser state, mixer
  state, step, RNG, latest eval loss; reference params are *not* saved: they
  are reloaded from the reference run),
* ``host``: JSON with the sampler state (``sampler.get_state()``), the last
  weights sent to the sampler and the step; everything the host loop needs to
  continue the same data stream.

* ``process`` (when given): one JSON file per process
  (``process/process_<i>-of-<n>.json``, :mod:`mixjax.train.process_json`),
  for per-process values such as each host's sampler state on a multi-host run.

With ``async_save=True`` a save returns once the arrays are copied off the
devices and the files are written in the background, by every process for its
own shards; ``wait()`` (also done by ``restore`` and ``close``) blocks until
the last save is complete.

``<step>`` is the number of completed train steps. Restoring needs an abstract
target (``jax.ShapeDtypeStruct``s) so optimiser namedtuples come back intact.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from mixjax.train import process_json


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            # sync (default): a save is complete when save() returns
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, host: dict[str, Any],
             process: dict[str, Any] | None = None, wait: bool = True) -> None:
        """Saves; ``process``: this process's own JSON values; ``wait=False`` returns
        before an async save is on disk (call ``wait()`` before reading it)."""
        state = {k: v for k, v in state.items() if k != "ref_params"}
        items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
        if process is not None:
            items["process"] = process_json.ProcessJsonSave(process)
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        if wait:
            self.manager.wait_until_finished()

    def wait(self) -> None:
        """Blocks until every pending (async) save is complete."""
        self.manager.wait_until_finished()

    def restore_process(self, step: int) -> dict[str, Any] | None:
        """This process's ``process`` item of checkpoint ``step`` (None if none was saved)."""
        self.wait()
        if not (self.directory / str(int(step)) / "process").exists():
            return None
        got = self.manager.restore(int(step), args=ocp.args.Composite(
            process=process_json.ProcessJsonRestore()))
        return got["process"]

    def restore(self, step: int | None, abstract_state: dict) -> tuple[dict, dict]:
        """``(state, host)`` of checkpoint ``step`` (latest when None)."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = {k: v for k, v in abstract_state.items() if k != "ref_params"}
        target = jax.tree.map(_abstract, target)
        got = self.manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
        return got["state"], got["host"]

    def close(self) -> None:
        self.manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
