"""One proxy-swarm run of the fault suite, in its own process (so SIGKILL is real).

    python swarm_worker.py OUT_DIR PHASE AT

PHASE: none | kill (SIGKILL right after step AT's metrics record is written) | term
(SIGTERM at step AT: the engine checkpoints; exits 128 + SIGTERM as the CLI does). Writes OUT_DIR/result.json
when the run finishes.
"""

import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from mixjax.config import Config  # noqa: E402
from mixjax.run.signals import Interrupted  # noqa: E402
from mixjax.search import swarm as S  # noqa: E402
from mixjax.search import swarm_train  # noqa: E402

STEPS, CKPT_EVERY, EVAL_EVERY = 8, 2, 3


def config() -> Config:
    cfg = Config(name="swarm_fault")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.sampler = 16, 8, "stratified"
    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 16, 1, 2
    cfg.train.steps, cfg.train.log_every = STEPS, 1
    cfg.train.ckpt_every, cfg.train.eval_every = CKPT_EVERY, EVAL_EVERY
    cfg.eval.num_seqs, cfg.eval.batch_size = 2, 2
    return cfg


def main(out, phase, at):
    import numpy as np
    at = int(at)
    mix = np.random.default_rng(3).dirichlet(np.full(8, 0.7), size=2)
    sw = S.Swarm(config(), mix, route="upsample", strategy="map")
    real = swarm_train.SwarmClient.after_step

    def after_step(self, t, state, m):
        real(self, t, state, m)
        if t + 1 == at and phase == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if t + 1 == at and phase == "term":
            os.kill(os.getpid(), signal.SIGTERM)
    swarm_train.SwarmClient.after_step = after_step
    try:
        res = S.train_swarm(sw, out, log=lambda line: print(line, file=sys.stderr, flush=True))
    except Interrupted as e:        # as the `mixjax search` commands exit
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    assert res.steps == STEPS
    S.save_result(res, mix, sw.domains, pathlib.Path(out) / "result.json")


if __name__ == "__main__":
    main(*sys.argv[1:])
