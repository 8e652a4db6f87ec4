"""Reads a finished run's checkpoint the way the fault tests compare runs: state and host JSON."""

import orbax.checkpoint as ocp

from mixjax.train import checkpoint as ckpt_lib


def restore(ck_dir, step):
    """``(state, host)`` of checkpoint ``step`` in ``ck_dir``."""
    ck = ckpt_lib.Checkpointer(ck_dir)
    got = ck.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), host=ocp.args.JsonRestore()))
    ck.close()
    return got["state"], got["host"]
