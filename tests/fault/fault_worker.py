"""One run of the fault-injection suite, in its own process (so SIGKILL is real).

    python fault_worker.py RUN_DIR MIXER STEPS RESUME KILL_PHASE KILL_AT KILL_DELAY

MIXER: odm (a sampling-driven online mixer), doge (a gradient mixer), uniform (static).
KILL_PHASE: none | step (after step KILL_AT is dispatched, once the checkpoints already
saved are on disk: "checkpoint k is the latest" holds however fast the steps run, e.g. with
a warm compilation cache and the loop drawing inline) | eval (inside the evaluation
after step KILL_AT) | ckpt (KILL_DELAY seconds into the asynchronous write of checkpoint
KILL_AT). The run is otherwise the one every resume continues.
"""

import os
import pathlib
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from mixjax.train import checkpoint as ckpt_lib  # noqa: E402
from mixjax.train import loop  # noqa: E402
from train_fakes import fake_data, tiny_config  # noqa: E402


def config(run_dir, mixer: str, steps: int):
    cfg = tiny_config(run_dir, steps=steps, eval_every=3, ckpt_every=2, keep_ckpts=2)
    cfg.optim.decay, cfg.optim.warmup_steps = "constant", 0
    cfg.data.sampler = "stratified"
    if mixer == "odm":
        cfg.mixing.name, cfg.mixing.apply_to = "odm", "sampling"
        cfg.mixing.hparams = {"warmup_steps": 1}
        cfg.data.sampler = "multinomial"
    elif mixer == "doge":
        cfg.mixing.name, cfg.mixing.hparams = "doge", {"target": "universal", "mu": 0.01}
        cfg.data.sampler = "per_domain"
    else:
        cfg.mixing.name = "uniform"
    return cfg


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def main(run_dir, mixer, steps, resume, phase, at, delay):
    steps, resume, at, delay = int(steps), resume == "1", int(at), float(delay)
    cfg = config(run_dir, mixer, steps)
    done = {"step": 0}
    checkpointers = []
    real_init = ckpt_lib.Checkpointer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        checkpointers.append(self)
    ckpt_lib.Checkpointer.__init__ = init

    def on_step(s):
        done["step"] = s
        if phase == "step" and s == at:
            for c in checkpointers:   # the asynchronous writes of earlier checkpoints
                c.wait()
            _kill()

    if phase == "eval":
        real_eval = loop.Trainer.evaluate

        def evaluate(self, params):
            out = real_eval(self, params)
            if done["step"] == at:
                _kill()            # computed, not yet written
            return out
        loop.Trainer.evaluate = evaluate
    if phase == "ckpt":
        real_save = ckpt_lib.Checkpointer.save

        def save(self, step, *a, **k):
            real_save(self, step, *a, **k)
            if step == at:
                time.sleep(delay)  # the background thread is writing the files
                _kill()
        ckpt_lib.Checkpointer.save = save
    loop.train(cfg, data=fake_data(cfg), resume=resume, on_step=on_step,
               log=lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    main(*sys.argv[1:])
