"""PCGrad gradient surgery (Yu et al. 2020, arXiv 2001.06782) on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_pcgrad.py --set train.run_dir=runs/tiny_pcgrad
Variants:
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=2
    (grads.strategy=jvp cannot give the Gram matrix: a config error before compiling)

The model gradient is sum_d c_d g_d with c computed from the K x K Gram matrix of
the per-domain gradients (mixjax.mixing.aggregators); the sampler stays uniform and
stratified (B/K sequences per domain) for the vmap gradient engine. Logged weights
are c / sum(c).

Measured (1 seed, shared 2-core CPU with load ~13): 475 s wall, 63 s CPU (user +
sys). Final validation loss averaged over the 8 domains 2.744 vs 2.758 for the
uniform mixture and 2.787 for the natural one (same seed and steps). The
coefficients stay near uniform (largest normalised weight 0.16 on average) and sum
to about 8 = K (torchjd and the paper sum the projected gradients; the logged
objective is sum_d c_d L_d, ~26), so the update is about K times the mean-loss
gradient before AdamW's normalisation. Expect about the uniform run's loss; the
0.014 difference is one seed.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_pcgrad"
    cfg.data.sampler = "per_domain"
    cfg.train.run_dir = "runs/lm_tiny_pcgrad"
    cfg.mixing.name = "pcgrad"
    cfg.mixing.hparams = {"seed": 0}
    cfg.mixing.sampling_weights = "uniform"
    cfg.grads.strategy = "vmap"
    return cfg
