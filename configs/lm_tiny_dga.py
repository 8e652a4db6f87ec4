"""DGA (Fan, Grangier, Ablin 2024, arXiv 2410.02498) on mixpile-tiny, out-of-domain target.

Command:
    mixjax train configs/lm_tiny_dga.py --set train.run_dir=runs/tiny_dga
Runtime: the jvp strategy costs ~1.7-1.8x a plain step
(benchmarks/bench_grads.py). Measured on the rebuilt mixpile-tiny (2026-11-27,
idle 2-core machine): 200 steps in 57 s wall; the 2-step CLI test takes ~10 s
including compiles.
One run (seed 0): the weights collapse onto math (0.92; the other six sit at
the eps floor 0.014); held-out code loss 4.15 vs 2.92 averaged over the
training domains at step 200 (validation). One seed, no baseline run: this
says the pipeline runs, not that DGA helps code here.

Target: code is held out. It is never sampled for training (K = 7 training
domains), its validation split gives the target gradient g_spe every step,
and it is still evaluated (``loss/code`` in eval.jsonl, "code (held out)" in
the printed table; not in loss_avg). DGA acts on sampling, so batches have any
composition: grads.strategy=jvp (one tangent pass + one backward, memory
independent of K). start_step 20: on mixpile-tiny every domain's early
gradient points along the shared byte statistics (docs/gradients.md);
eps 0.05 keeps every domain sampled (an absent domain can never come back).
Variant: code as a training domain too: --set data.domains=None
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config

TRAIN_DOMAINS = ("conversation", "legal", "literature", "math", "news", "science", "tech_docs")


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_dga"
    cfg.data.domains = TRAIN_DOMAINS
    cfg.data.sampler = "multinomial"
    cfg.train.run_dir = "runs/lm_tiny_dga"
    cfg.mixing.name = "dga"
    cfg.mixing.hparams = {"eta": 1.0, "ema": 0.5, "eps": 0.05, "start_step": 20}
    cfg.grads.strategy = "jvp"
    cfg.grads.target = "code"
    return cfg
