"""ADO (Jiang et al. 2025) on mixpile-tiny: sampling from per-domain power-law fits of the loss.

Command:
    mixjax train configs/lm_tiny_ado.py --set train.run_dir=runs/tiny_ado

Each domain's training loss is fitted with L(n) = e^E + e^A n^-alpha inside the
compiled step (every ``refit_every`` steps, on a ring buffer of block-mean
losses); domains still learning fast get sampled more. The
reference's schedule (ignore 1000, start 1000, refit every 1000 of 60k steps)
is scaled to a 200-step run.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_ado"
    cfg.train.run_dir = "runs/lm_tiny_ado"
    cfg.mixing.name = "ado"
    cfg.mixing.hparams = {"ignore_steps": 20, "start_step": 50, "refit_every": 25,
                          "record_every": 2, "history": 128}
    return cfg
