"""Sample-level loss reweighting (Sow et al. 2025) on mixpile-tiny, on top of the uniform mixture.

Command:
    mixjax train configs/lm_tiny_sample_reweight.py --set train.run_dir=runs/tiny_srw
Variants:
    --set mixing.sample_reweight=linupper      # or extremes, upper
    --set mixing.name=doremi ...               # composes with any domain mixer

Per-sequence losses are mapped to [-1, 1], shaped (quadratic: 1 - h^2, the
shipped choice) and turned into weights by a softmax with temperature 1, after
a burn-in (reference: 1000 of 20k steps; here 50 of 200).
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_sample_reweight"
    cfg.train.run_dir = "runs/lm_tiny_sample_reweight"
    cfg.mixing.sample_reweight = "quadratic"
    cfg.mixing.sample_reweight_hparams = {"temperature": 1.0, "burn_in": 50}
    return cfg
