"""ToReMi (Zhu et al. 2025, arXiv 2504.00695) on mixpile-tiny: topic (= domain) loss weights
raised for hard topics early, lowered for still-hard (noisy) topics late.

Command:
    mixjax train configs/lm_tiny_toremi.py --set train.run_dir=runs/tiny_toremi
    (topics finer than the corpus domains: `mixjax data regroup mixpile-tiny --k 16 --out
     runs/regroup_tiny_k16` and --set data.spec=runs/regroup_tiny_k16/spec.json)
Runtime (2026-12-04, 2-core machine shared with other runs, load ~9): 200 steps in
2 min 37 s wall (45 s CPU); the step costs 1.01x a plain one (benchmarks/bench_mixers.py).
Result (one seed, 0): validation loss_avg 2.835 (ppl 17.50), worse than the same-budget
stratified uniform run (--set data.sampler=stratified --set mixing.sampling_weights=uniform
on lm_tiny_uniform: 2.795, ppl 16.88), on every domain. Stage 0 drove the weights to math
0.28 (the highest-loss domain), code 0.14, the rest 0.08-0.12; after the switch at step
140 they end at 0.08 (conversation) to 0.145 (math, legal). At 200 steps the early
upweighting of the hardest domain costs more than it gains; one seed.

Every batch holds every domain equally (stratified sampler, uniform sampling weights); the
topic weights act on the loss. The reference adjusts every 100 steps and switches stage at
step 7000; this 200-step run adjusts every 10 steps and switches at step 140 (70%).
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_toremi"
    cfg.train.run_dir = "runs/lm_tiny_toremi"
    cfg.data.sampler = "stratified"
    cfg.mixing.name = "toremi"
    cfg.mixing.sampling_weights = "uniform"
    cfg.mixing.hparams = {"adjust_every": 10, "switch_step": 140}
    return cfg
