"""Feasible Learning (Ramirez et al. 2025, arXiv 2501.14912), resilient form, on mixpile-tiny, on
top of the uniform mixture.

Command:
    mixjax train configs/lm_tiny_feasible.py --set train.run_dir=runs/tiny_feasible
Variants:
    --set mixing.hparams.slack_decay=0.0      # hard bounds (plain FL)
    --set mixing.hparams.eps=2.0              # a tighter bound on each sequence's loss

Each sequence's mean token loss is bounded by eps = 2.5 nats; a multiplier per sequence (a table
of 2^16 slots keyed by the hash of the token row, in the checkpointed mixer state) rises by
dual_lr (l - eps - slack_decay lam) and weights that sequence's loss (mixjax.mixing.feasible).

Measured (1 seed, shared 2-core CPU): 126 s wall, 53 s CPU (user + sys) for 200 steps. Final
validation loss averaged over the 8 domains 2.909 vs 2.914 for configs/lm_tiny_uniform.py (same
seed, steps and machine); worst domain (math) perplexity 25.52 vs 26.84. On a stream that does
not revisit sequences within 200 steps every multiplier is used once (the hinge weighting of
the module docstring). One seed: expect about the uniform run's loss.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_feasible"
    cfg.train.run_dir = "runs/lm_tiny_feasible"
    cfg.mixing.name = "feasible"
    cfg.mixing.hparams = {"eps": 2.5, "dual_lr": 1.0, "slack_decay": 1.0}
    return cfg
