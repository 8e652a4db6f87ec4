"""DoReMi (Xie et al. 2023) proxy run on mixpile-tiny: learns domain weights against a reference.

Commands (the reference is the tiny uniform run, same tokenizer):
    mixjax train configs/lm_tiny_uniform.py                      # -> runs/lm_tiny_uniform
    mixjax train configs/lm_tiny_doremi.py --set train.run_dir=runs/tiny_doremi
The whole recipe (reference -> proxy -> base model vs baseline, weights.json,
per-domain perplexity table, weight-trajectory plot) is one command:
    mixjax mix doremi configs/lm_tiny_doremi.py --out runs/doremi_tiny

The proxy samples uniformly (``mixing.sampling_weights = "uniform"``, as the
reference implementation) and weights domain-d tokens by alpha_d / p_d. The
sampler is stratified so every batch holds every domain: with 16 i.i.d. rows
over 8 domains a domain misses a batch with probability (7/8)^16 = 12%, and an
absent domain keeps its score (ln|V| = 5.6 before it was ever seen), which
early in a short run would hand it a lasting head start (reference pitfall). The
weights to train a final model with are the time average of alpha
(``mixer.average``; written by the workflow as weights.json). eta = 1 and
smoothing 1e-3 are the paper's; vocab_size 264 (the byte tokenizer's padded
vocabulary) gives the reference's initial score ln|V| for domains not yet seen.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_doremi"
    cfg.train.run_dir = "runs/lm_tiny_doremi"
    cfg.train.reference = "runs/lm_tiny_uniform"
    cfg.mixing.name = "doremi"
    cfg.mixing.hparams = {"eta": 1.0, "smoothing": 1e-3, "vocab_size": 264}
    cfg.mixing.sampling_weights = "uniform"
    cfg.data.sampler = "stratified"              # every domain in every batch (2 rows each)
    return cfg
