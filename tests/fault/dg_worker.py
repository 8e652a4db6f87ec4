"""One DG sweep of the fault suite, in its own process (so SIGKILL is real).

    python dg_worker.py RUN_DIR PHASE AT

PHASE: none | kill (SIGKILL right after step AT of the running group is dispatched) |
term (SIGTERM there: the group checkpoints and the sweep stops cleanly). The units'
in-flight checkpoints are kept (the test reads the final state from them).
"""

import os
import pathlib
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from mixjax.dg import config as C  # noqa: E402
from mixjax.dg import group_client  # noqa: E402
from mixjax.dg import sweep as S  # noqa: E402

OVERRIDES = ["steps=12", "checkpoint_freq=4", "test_envs=single", "n_hparams=1", "n_trials=1",
             "vmap=True"]


def main(run_dir, phase, at):
    at = int(at)
    cfg = C.load(str(ROOT / "configs" / "dg_tiny.py"), OVERRIDES)
    real = group_client.DGClient.after_step

    def after_step(self, t, state, m):
        real(self, t, state, m)
        if t + 1 == at and phase == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if t + 1 == at and phase == "term":
            os.kill(os.getpid(), signal.SIGTERM)
    group_client.DGClient.after_step = after_step
    S.discard_checkpoints = lambda *a, **k: None
    try:
        S.sweep(cfg, run_dir, log=lambda line: print(line, file=sys.stderr, flush=True))
    except group_client.Interrupted as e:       # as `mixjax dg sweep` exits
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main(*sys.argv[1:])
