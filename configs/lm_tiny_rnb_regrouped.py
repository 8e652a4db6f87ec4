"""R&B end to end (Ge et al. 2025, arXiv 2505.00358): Regroup mixpile-tiny into 8 semantic
clusters, then Balance them with the `rnb` mixer.

Commands:
    mixjax data regroup mixpile-tiny --k 8 --svd 64 --out runs/regroup_tiny_k8
    mixjax train configs/lm_tiny_rnb_regrouped.py --set train.run_dir=runs/tiny_rnb_regrouped
Runtime (2026-12-04, the 2-core machine shared with other runs, load 6-12): the regroup
15 s wall; the 200-step run 15 min 43 s wall (3 min 21 s CPU; lm_tiny_rnb on an idle
machine: 111 s). Expect a few minutes on an idle machine.
Result (one run, seed 0): clusters of 180-659 documents (c00 math 99%, c01 troubleshooting
conversations, c02 prose, c03 code and tech_docs, c04 science, c05 math problems, c06
licences, c07 web chat); final R&B weights 0.095 (c00) to 0.160 (c01); validation
loss_avg over the 8 clusters 2.79 (worst cluster c05, ppl 20.9).

The clusters replace the 8 corpus domains (data.spec = the regroup's spec.json); their
train/validation/test splits are the clusters' own (mixjax.data.regroup docstring), so
validation losses are per cluster and not comparable domain by domain with lm_tiny_rnb.
Everything else is lm_tiny_rnb (lam = 1, eps = 0.05, grads.layout = rows).
"""

from configs.lm_tiny_rnb import get_config as tiny_rnb
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_rnb()
    cfg.name = "lm_tiny_rnb_regrouped"
    cfg.data.spec = "runs/regroup_tiny_k8/spec.json"
    cfg.train.run_dir = "runs/lm_tiny_rnb_regrouped"
    return cfg
