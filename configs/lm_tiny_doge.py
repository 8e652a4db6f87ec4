"""DoGE proxy on mixpile-tiny (Fan et al. 2024, arXiv 2310.15393): universal target.

Command (the whole recipe: DoGE proxy -> base model on the averaged weights vs
the baseline):
    mixjax mix doge configs/lm_tiny_doge.py
Just the proxy:
    mixjax train configs/lm_tiny_doge.py --set train.run_dir=runs/tiny_doge
Variants:
    out-of-domain target (code's validation split):
        --set mixing.hparams.target=ood --set grads.target=code
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=2

DoGE acts on the gradient (sum_d alpha_d g_d); the sampler stays uniform and
stratified (B/K sequences per domain) for the vmap gradient engine.
mu = 0.01 is the reference's shipped universal setting (0.05 for OOD).
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_doge"
    cfg.data.sampler = "per_domain"
    cfg.train.run_dir = "runs/lm_tiny_doge"
    cfg.mixing.name = "doge"
    cfg.mixing.hparams = {"target": "universal", "mu": 0.01}
    cfg.mixing.sampling_weights = "uniform"
    cfg.grads.strategy = "vmap"
    return cfg
