"""UPGrad Jacobian descent (Quinton & Rey 2024, arXiv 2406.16232) on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_upgrad.py --set train.run_dir=runs/tiny_upgrad
Variants:
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=2
    (grads.strategy=jvp cannot give the Gram matrix: a config error before compiling)

The model gradient is sum_d c_d g_d with c computed from the K x K Gram matrix of
the per-domain gradients (mixjax.mixing.aggregators); the sampler stays uniform and
stratified (B/K sequences per domain) for the vmap gradient engine. Logged weights
are c / sum(c).

Measured (1 seed, shared 2-core CPU with load ~13): 468 s wall, 63 s CPU
(user + sys). Final validation loss averaged over the 8 domains 2.750 vs 2.758
for the uniform mixture and 2.787 for the natural one (same seed and steps).
The coefficients stay near uniform (largest normalised weight 0.16 on
average; sum of c ~1.3, the projections add weight to resolve conflicts).
Expect about the uniform run's loss; the 0.008 difference is one seed.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_upgrad"
    cfg.data.sampler = "per_domain"
    cfg.train.run_dir = "runs/lm_tiny_upgrad"
    cfg.mixing.name = "upgrad"
    cfg.mixing.hparams = {"norm_eps": 1e-4, "reg_eps": 1e-4}
    cfg.mixing.sampling_weights = "uniform"
    cfg.grads.strategy = "vmap"
    return cfg
