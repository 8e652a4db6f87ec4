"""Fish (Shi et al. 2022, arXiv 2104.09937) over the text domains of mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_fish.py --set train.run_dir=runs/tiny_fish
Runtime: each train step is one meta step = K = 8 inner AdamW steps on
B/K = 2 sequences of one domain each (random order), then
theta += meta_lr (theta~ - theta) (DomainBed's form; meta_lr 0.5, the
DG reference default). Measured: 200 meta steps in 28 s wall on the shared
2-core dev machine (validation loss_avg 2.28 at step 200, one seed); the
2-step CLI test takes ~4 s.

The sampler is per_domain (exactly B/K sequences of every domain per batch);
the weights stay uniform (Fish reweights nothing; it aligns domain gradients).
The inner optimiser makes K updates per train step: its schedule spans
K * train.steps updates, so warmup_steps = 160 inner updates = 20 meta steps.
Logged: loss/<d> = each domain's inner loss, grad_norm = |theta~ - theta|.

Variant: the official code's theta += (meta_lr / K)(theta~ - theta):
    --set train.objective_hparams.divide_by_meta_steps=True

Note: the measured numbers above come from the earlier mixpile-tiny (8 kB documents, 1-2
validation documents per domain) and earlier eval sets (first sequences of the split); the
corpus was rebuilt with evaluation floors (docs/data_corpus.md) and they need re-measuring.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_fish"
    cfg.data.sampler = "per_domain"
    cfg.optim.warmup_steps = 160          # inner updates (K = 8 per meta step)
    cfg.train.run_dir = "runs/lm_tiny_fish"
    cfg.train.objective = "fish"
    cfg.train.objective_hparams = {"meta_lr": 0.5, "divide_by_meta_steps": False}
    return cfg
