"""ODM (Albalak et al. 2023) on mixpile-tiny: an EXP3 bandit picks the sampling mixture online.

Command:
    mixjax train configs/lm_tiny_odm.py --set train.run_dir=runs/tiny_odm
Variant (the README's smoothed-mean rewards):
    --set mixing.name=odm_smoothed

The reward of a domain is its batch loss / 10; sampling follows the bandit
from step ``warmup_steps`` on (static natural weights before). The reference
warms up for 2000 of 100k steps; a 200-step run uses 20.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_odm"
    cfg.train.run_dir = "runs/lm_tiny_odm"
    cfg.mixing.name = "odm"
    cfg.mixing.hparams = {"warmup_steps": 20}
    return cfg
