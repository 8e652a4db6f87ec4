"""ODM (Albalak et al. 2023) on mixpile-tiny: an EXP3 bandit picks the sampling mixture online.

Command:
    mixjax train configs/lm_tiny_odm.py --set train.run_dir=runs/tiny_odm
Variant (the README's smoothed-mean rewards):
    --set mixing.name=odm_smoothed

The reward of a domain is its batch loss / 10; sampling follows the bandit
from step ``warmup_steps`` on (static natural weights before). The reference
warms up for 2000 of 100k steps; a 200-step run uses 20.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_odm")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.tokenizer = "byte"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 16
    cfg.model.d_model = 128
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.train.steps = 200
    cfg.train.eval_every = 100
    cfg.train.ckpt_every = 100
    cfg.eval.num_seqs = 16
    cfg.train.run_dir = "runs/lm_tiny_odm"
    cfg.mixing.name = "odm"
    cfg.mixing.hparams = {"warmup_steps": 20}
    return cfg
