"""DGA (Fan, Grangier, Ablin 2024, arXiv 2410.02498) on mixpile-tiny, out-of-domain target.

Command:
    mixjax train configs/lm_tiny_dga.py --set train.run_dir=runs/tiny_dga
Runtime: the jvp strategy costs ~1.7-1.8x a plain step
(benchmarks/bench_grads.py). Measured: 200 steps in 63 s wall on the shared
2-core dev machine; the 2-step CLI test takes ~10 s including compiles.
One run (seed 0): the weights collapse onto legal (0.92; the other six sit at
the eps floor 0.0136); held-out code loss 4.00 vs 2.79 averaged over the
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

Note: the measured numbers above come from the earlier mixpile-tiny (8 kB documents, 1-2
validation documents per domain) and earlier eval sets (first sequences of the split); the
corpus was rebuilt with evaluation floors (docs/data_corpus.md) and they need re-measuring.
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
