"""IWRM: Jacobian descent over the sequences of each batch (Quinton & Rey 2024, arXiv 2406.16232,
section 5), UPGrad over the per-sequence gradients, on mixpile-tiny, uniform mixture.

Command:
    mixjax train configs/lm_tiny_iwrm.py --set train.run_dir=runs/tiny_iwrm
Variants:
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=4

The model gradient is sum_b c_b g_b, c from the B x B Gram of the per-sequence gradients (the
gradient engine's example_gram; mixjax.mixing.iwrm); logged weights are each domain's share of c.

Measured (shared 2-core CPU): 166 s wall, 70 s CPU (user + sys) for 200 steps (the vmap engine's
per-sequence gradients: 1.25x the uniform run's CPU time). Final validation loss averaged over the
8 domains, seeds 0/1/2: 2.743 / 2.728 / 2.778; its control (the same engine and sampler with
c = 1/B) 2.856 / 2.802 / 2.781: difference -0.063 +- 0.139 (95% t), no reliable effect; c sums to
~1.3, and c = 1.3/B alone gives 2.778 on seed 0 (docs/selection.md). Expect about 2.75.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_iwrm"
    cfg.train.run_dir = "runs/lm_tiny_iwrm"
    cfg.mixing.name = "iwrm"
    cfg.mixing.hparams = {"norm_eps": 1e-4, "reg_eps": 1e-4}
    cfg.grads.strategy = "vmap"
    return cfg
