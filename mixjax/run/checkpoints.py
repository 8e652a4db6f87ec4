"""Resume: the newest intact checkpoint, falling back to the previous good one.

The checkpoint layout itself is :mod:`mixjax.train.checkpoint`'s; this module
decides *which* checkpoint a resumed job continues from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from mixjax.train import checkpoint as ckpt_lib


@dataclasses.dataclass
class Resumed:
    """What a job resumes from: checkpoint ``step``'s state, host JSON and this
    process's own item (None when none was saved)."""
    step: int
    state: Any
    host: dict
    own: dict | None

    @property
    def sampler(self):
        """This process's data-stream state (its own item on a multi-host run)."""
        return (self.own or self.host)["sampler"]


def restore_good_checkpoint(checkpointer: ckpt_lib.Checkpointer, abstract,
                            resume_from: int | None, log: Callable[[str], None]):
    """``(step, state, host, process)`` of the newest intact checkpoint (or ``resume_from``).

    A damaged checkpoint is reported in one line and moved aside (never deleted), and
    the previous one is tried; with ``resume_from`` that checkpoint must be intact and
    newer ones are moved aside so the resumed run can write its own.
    """
    steps = sorted(checkpointer.all_steps(), reverse=True)
    if resume_from is not None:
        if resume_from not in steps:
            raise ckpt_lib.CheckpointError(
                f"--resume-from {resume_from}: no checkpoint {resume_from} in "
                f"{checkpointer.directory}; have {sorted(steps)}")
        state, host, own = checkpointer.restore_verified(resume_from, abstract)
        for s in steps:
            if s > resume_from:
                where = checkpointer.move_aside(s)
                log(f"checkpoint {s} is newer than --resume-from {resume_from}: moved to {where}")
        return resume_from, state, host, own
    for i, s in enumerate(steps):
        try:
            state, host, own = checkpointer.restore_verified(s, abstract)
        except ckpt_lib.CheckpointError as e:
            where = checkpointer.move_aside(s)
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            if nxt is None:
                raise ckpt_lib.CheckpointError(
                    f"{e}; no earlier checkpoint to resume from (moved to {where}); "
                    "start a new run in another run dir") from e
            log(f"{e}; resuming from {nxt} (moved to {where})")
            continue
        return s, state, host, own
    return None


def resume(checkpointer: ckpt_lib.Checkpointer, state, *, resume_from: int | None = None,
           log: Callable[[str], None] = lambda line: None) -> Resumed | None:
    """The checkpoint a job with initial ``state`` resumes from (None: start fresh).

    ``state`` gives the target's structure, shapes, dtypes and shardings (each array
    is restored onto its own sharding).
    """
    if not checkpointer.all_steps():
        return None
    abstract = jax.tree.map(ckpt_lib._abstract, state)
    got = restore_good_checkpoint(checkpointer, abstract, resume_from, log)
    return None if got is None else Resumed(*got)
