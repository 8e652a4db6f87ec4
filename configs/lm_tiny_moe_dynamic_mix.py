"""Dynamic data mixing for MoE (arXiv 2406.11256) on the tiny MoE LM of configs/lm_tiny_moe.py.

Command:
    mixjax train configs/lm_tiny_moe_dynamic_mix.py --set train.run_dir=runs/lm_tiny_moe_dynamic
Runtime and result (shared 2-core CPU, 200 steps): about 4 min wall (60-62 s user CPU,
    0.72 GB peak RSS). Uniform-average validation loss over seeds 0/1/2: 2.861 / 2.807 /
    2.940 (mean 2.869) vs 2.818 / 2.834 / 2.815 (mean 2.822) for configs/lm_tiny_moe.py
    with the same seeds: +0.047 nats, 95% t-interval [-0.142, +0.237] over the paired
    seeds, so no measurable gain at this size (negative point estimate; the uniform
    average also favours the uniform mixture by construction). By step 200 the weights
    move to code 0.36, legal 0.18, math 0.11, the rest 0.05-0.08 (seed 0).

Mixer ``moe_dynamic`` (mixjax.mixing.moe_dynamic, docs/experts.md): every 25 steps each
domain's routing representation (tokens per expert per MoE block in the batch, normalised)
is compared with the others' by cosine similarity, and the sampling weights move towards
the least redundant domains (eta 10, smoothing 0.05: the reference's defaults). Same model,
data, budget and seed as configs/lm_tiny_moe.py (uniform mixture), its baseline.
"""

from configs.lm_tiny_moe import get_config as _base
from mixjax.config import Config


def get_config() -> Config:
    cfg = _base()          # the same MoE model, data, budget and seed as its baseline
    cfg.name = "lm_tiny_moe_dynamic_mix"
    cfg.train.run_dir = "runs/lm_tiny_moe_dynamic_mix"
    cfg.mixing.name = "moe_dynamic"
    cfg.mixing.hparams = {"eta": 10.0, "smoothing": 0.05, "update_every": 25}
    return cfg
