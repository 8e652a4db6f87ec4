"""tDRO (Ma et al. 2025) proxy run on mixpile-tiny: log-weights ascend the loss ratio proxy/reference.

Commands (the reference is the tiny uniform run):
    mixjax train configs/lm_tiny_uniform.py                      # -> runs/lm_tiny_uniform
    mixjax train configs/lm_tiny_tdro.py --set train.run_dir=runs/tiny_tdro

Uniform sampling; domain-d tokens weighted by alpha_d / p_d. The reference
script's step size 0.02 and gradient-norm clip 1 are kept; the final alpha
(``weights``) is tDRO's output mixture.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_tdro"
    cfg.train.run_dir = "runs/lm_tiny_tdro"
    cfg.train.reference = "runs/lm_tiny_uniform"
    cfg.mixing.name = "tdro"
    cfg.mixing.hparams = {"step_size": 0.02, "max_grad_norm": 1.0}
    cfg.mixing.sampling_weights = "uniform"
    cfg.data.sampler = "stratified"              # every domain in every batch (2 rows each)
    return cfg
