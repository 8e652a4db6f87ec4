"""Skill-it (Chen et al., NeurIPS 2023, arXiv 2307.14430) on mixpile-tiny: skills-graph weights.

Command:
    mixjax train configs/lm_tiny_skillit.py --set train.run_dir=runs/tiny_skillit
Variants:
    a graph file: --set mixing.hparams.graph=graph.npy   (K x K, row = trained domain)
    the graph from one-hot runs (one run dir per domain, in domain order):
        --set mixing.hparams.graph=runs --set mixing.hparams.graph_runs=[runs/oh_code,...]

Every 50 steps p ∝ exp(eta * A * sum of the last 3 validation evaluations); the
loop evaluates after steps 1, 51, 101, ... when the mixer asks. With the
identity graph (no one-hot runs) the higher-loss domains get more weight.
Acts on sampling.

Measured (1 seed, shared 2-core CPU with load ~13): 387 s wall, 53 s CPU (user +
sys). Final validation loss averaged over the 8 domains 2.768 vs 2.787 for the
natural mixture and 2.758 for the uniform one (same seed and steps); code 3.364 vs
3.461. The last mixture (from step 151) gives code 0.167 and literature 0.105
(highest and lowest validation loss). One seed: the 0.02 average gain is not shown
to be above data-order noise.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_skillit"
    cfg.train.run_dir = "runs/lm_tiny_skillit"
    cfg.mixing.name = "skillit"
    cfg.mixing.hparams = {"eta": 0.2, "update_steps": 50, "window": 3, "graph": "identity"}
    return cfg
