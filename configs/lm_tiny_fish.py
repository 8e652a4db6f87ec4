"""Fish (Shi et al. 2022, arXiv 2104.09937) over the text domains of mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_fish.py --set train.run_dir=runs/tiny_fish
Runtime: each train step is one meta step = K = 8 inner AdamW steps on
B/K = 2 sequences of one domain each (random order), then
theta += meta_lr (theta~ - theta) (DomainBed's form; meta_lr 0.5, the
DG reference default). Measured on the rebuilt mixpile-tiny (2026-11-27, idle
2-core machine): 200 meta steps in 25 s wall (validation loss_avg 2.34 at step
200, one seed); the 2-step CLI test takes ~4 s.

The sampler is per_domain (exactly B/K sequences of every domain per batch);
the weights stay uniform (Fish reweights nothing; it aligns domain gradients).
The inner optimiser makes K updates per train step: its schedule spans
K * train.steps updates, so warmup_steps = 160 inner updates = 20 meta steps.
Logged: loss/<d> = each domain's inner loss, grad_norm = |theta~ - theta|.

Variant: the official code's theta += (meta_lr / K)(theta~ - theta):
    --set train.objective_hparams.divide_by_meta_steps=True
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_fish"
    cfg.data.sampler = "per_domain"
    cfg.optim.warmup_steps = 160          # inner updates (K = 8 per meta step)
    cfg.train.run_dir = "runs/lm_tiny_fish"
    cfg.train.objective = "fish"
    cfg.train.objective_hparams = {"meta_lr": 0.5, "divide_by_meta_steps": False}
    return cfg
