"""Checkpoints of a run: orbax ``CheckpointManager`` under ``RUN_DIR/checkpoints``.

Each checkpoint ``checkpoints/<step>/`` holds two items:

* ``state``: the whole train-state pytree (params, optimiser state, mixer
  state, step, RNG, latest eval loss; reference params are *not* saved: they
  are reloaded from the reference run),
* ``host``: JSON with the sampler state (``sampler.get_state()``), the last
  weights sent to the sampler and the step; everything the host loop needs to
  continue the same data stream.

``<step>`` is the number of completed train steps. Restoring needs an abstract
target (``jax.ShapeDtypeStruct``s) so optimiser namedtuples come back intact.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=False)  # a save is complete when save() returns
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, host: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k != "ref_params"}
        self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int | None, abstract_state: dict) -> tuple[dict, dict]:
        """``(state, host)`` of checkpoint ``step`` (latest when None)."""
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
