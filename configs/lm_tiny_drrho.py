"""DRRho / model steering (Wei et al. 2025, arXiv 2505.06699) on mixpile-tiny: every
sequence of a batch weighted by B softmax((loss - reference loss) / tau).

Commands (the reference is the tiny uniform run, same tokenizer and model):
    mixjax train configs/lm_tiny_uniform.py                      # -> runs/lm_tiny_uniform
    mixjax train configs/lm_tiny_drrho.py --set train.run_dir=runs/tiny_drrho
Runtime (2026-12-04, 2-core machine shared with other runs, load 6-12): the reference run
5 min 56 s wall, the DRRho run 3 min 20 s wall (52 s CPU), 200 steps each; the reference's
forward pass is the extra cost per step.
Result (one seed, 0): validation loss_avg 2.922 (ppl 19.09) against 2.914 (18.94) for the
uniform run that is also its reference: no gain at this budget (the reference is the
same-budget model, so the excess loss mainly tells sequences the reference has fitted
from those it has not; one seed cannot separate a 0.01-nat difference from noise).

Domains are sampled as by lm_tiny_uniform (multinomial, uniform weights; the mixer leaves
the domain weights alone); the step adds one forward pass of the frozen reference per
batch. tau = 1 nat: a sequence 1 nat further above its reference loss than another gets
e times its weight.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_drrho"
    cfg.train.run_dir = "runs/lm_tiny_drrho"
    cfg.train.reference = "runs/lm_tiny_uniform"
    cfg.mixing.name = "drrho"
    cfg.mixing.hparams = {"tau": 1.0}
    return cfg
