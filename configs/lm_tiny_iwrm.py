"""IWRM: Jacobian descent over the sequences of each batch (Quinton & Rey 2024, arXiv 2406.16232,
section 5), UPGrad over the per-sequence gradients, on mixpile-tiny, uniform mixture.

Command:
    mixjax train configs/lm_tiny_iwrm.py --set train.run_dir=runs/tiny_iwrm
Variants:
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=4

The model gradient is sum_b c_b g_b, c from the B x B Gram of the per-sequence gradients (the
gradient engine's example_gram; mixjax.mixing.iwrm); logged weights are each domain's share of c.

Measured (1 seed, shared 2-core CPU): 166 s wall, 70 s CPU (user + sys) for 200 steps (the vmap
engine's per-sequence gradients: ~1.5x the uniform run's CPU time). Final validation loss
averaged over the 8 domains 2.743; the same engine and sampler with c = 1/B (a plain mean of
the per-sequence gradients; a plugin mixer, docs/selection.md) 2.856, configs/lm_tiny_uniform.py
2.914. One seed: the 0.11 gap to its control is large for this model, but unconfirmed; the
c sum to more than 1 (the projections add weight), which enlarges the update before Adam's
normalisation, so part of it may be an effective learning-rate change.
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
