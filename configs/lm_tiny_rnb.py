"""R&B domain reweighting (Ge et al. 2025, arXiv 2505.00358) on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_rnb.py --set train.run_dir=runs/tiny_rnb
Runtime: R&B reads the K x K Gram matrix of the per-domain gradients of each
batch. The sampler draws with the R&B weights (apply_to=sampling), so batch
composition varies and the gradients come from grads.layout=rows: one forward,
K = 8 backward passes (~4x a plain step at K = 8 in benchmarks/bench_grads.py).
Measured on the rebuilt mixpile-tiny (2026-11-27, idle 2-core machine): 200
steps in 111 s wall; the 2-step CLI test takes ~4 s. One run (seed 0) ends with
weights between 0.095 (code) and 0.132 (legal, news); validation loss_avg 2.85.

Update every step: p <- softmax(lam * G p / |G p|), lam = 1 (weights stay
within e^2 of each other); eps = 0.05 keeps every domain sampled (an absent
domain keeps its share and has no gradient in that batch).
Variant: bounded cost with a fixed stratified sampler and the weights on the
loss: --set data.sampler=per_domain --set grads.layout=stratified
       --set mixing.apply_to=loss --set mixing.sampling_weights=uniform
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_rnb"
    cfg.data.sampler = "multinomial"
    cfg.train.run_dir = "runs/lm_tiny_rnb"
    cfg.mixing.name = "rnb"
    cfg.mixing.hparams = {"lam": 1.0, "update_every": 1, "eps": 0.05}
    cfg.grads.strategy = "vmap"
    cfg.grads.layout = "rows"
    return cfg
