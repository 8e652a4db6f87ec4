"""Aioli (Chen et al., ICLR 2025, arXiv 2411.05735) on mixpile-tiny: online mixing-law estimation.

Command:
    mixjax train configs/lm_tiny_aioli.py --set train.run_dir=runs/tiny_aioli
Variants:
    the shipped 3-domain script's estimator: --set mixing.hparams.one_hot_factor=0.5
        --set mixing.hparams.ema=0.5 --set mixing.hparams.normalize_A=True
    a static warm-up: --set mixing.hparams.prior_steps=50 (then the 150 remaining steps
        must hold whole rounds: update_steps=50 or 75)

Each 50-step round starts with LearnParams: 8 probes of 2 real training steps
on a one-hot mixture, each followed by a validation evaluation (the loop
evaluates when the mixer asks; 9 evaluations per round), then 34 steps on
p = exp(eta * column sums of the estimated A). Acts on sampling.

Measured (1 seed, shared 2-core CPU with load ~13): 728 s wall, 63 s CPU
(user + sys; 4 rounds x 9 evaluations). Final validation loss averaged over the
8 domains 2.925 vs 2.787 for the natural mixture and 2.758 for the uniform
one (same seed, steps): at 200
steps the 64 one-hot probe steps cost more than the learned mixture gains (a
negative result at this scale). The learned p of the last round gives code
0.023 and conversation/news ~0.2 (code's loss falls slowest per probe step).
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_aioli"
    cfg.train.run_dir = "runs/lm_tiny_aioli"
    cfg.mixing.name = "aioli"
    cfg.mixing.hparams = {"eta": 1.0, "update_steps": 50, "lp_rounds": 1, "lp_steps": 2}
    return cfg
