"""DIDS (Shi et al. 2025, arXiv 2504.13227) on mixpile-tiny, out-of-domain target.

Command:
    mixjax train configs/lm_tiny_dids.py --set train.run_dir=runs/tiny_dids
Runtime: 200 steps in 3 min 12 s wall (85 s user CPU) on the shared 2-core machine
under load ~8 (2026-12-05), compiles included; uniform on the same 7 domains took
1 min 45 s (41 s user CPU).
Result (seed 0, validation at step 200): loss_avg 2.763 over the 7 training domains,
held-out code 3.355; the uniform mixture on the same budget and data order (same command
with mixing.name=uniform, data.sampler=multinomial, grads.target=code): 2.682 and 3.263.
DIDS did worse here on both. The weights swing from round to round (the 1/alpha factor:
a domain sampled heavily in one round has a low utility in the next); from step ~130 the
round-mean target loss stops falling (3.33 -> 3.39), the effective improvement turns
negative, every utility is floored at 1e-7 except the farthest domain's (impact 0, so
utility exactly 0, which the reference does not floor) and the weights sit near uniform
with that one domain at the eps floor.

Target: code is held out, as in configs/lm_tiny_dga.py (never sampled, K = 7 training
domains); its validation split gives the target gradient g_t and the target loss every
step. DIDS acts on sampling, so batch composition varies: grads.layout=rows (one forward,
K backward passes; DIDS needs ||g_i||, which grads.strategy=jvp cannot give), restricted
to the last block's MLP and the final norm by grads.param_filter, as the reference restricts
its Fisher and gradients to the last 10% of the parameter tensors.
Rounds of 10 steps (20 rounds; the reference runs 25), beta 0.2 and the potential's fit
(5 rounds to predict, 5 ahead) are the reference's; eps 0.05 (ours) keeps every domain
sampled.

Variants:
    several targets: --set "grads.target=[code, math]" --set mixing.hparams.num_targets=2
        --set "data.domains=[conversation, legal, literature, news, science, tech_docs]"
    DIDS' regrouping half first (clusters as domains, mixjax/data/regroup.py):
        mixjax data regroup mixpile-tiny --k 8 --svd 64 --out runs/regroup_tiny_k8
        then set data.spec=runs/regroup_tiny_k8/spec.json, data.domains=None and a
        cluster as grads.target (or keep a held-out corpus domain via a spec that adds it)
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config

TRAIN_DOMAINS = ("conversation", "legal", "literature", "math", "news", "science", "tech_docs")


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_dids"
    cfg.data.domains = TRAIN_DOMAINS
    cfg.data.sampler = "multinomial"
    cfg.train.run_dir = "runs/lm_tiny_dids"
    cfg.mixing.name = "dids"
    cfg.mixing.hparams = {"update_every": 10, "beta": 0.2, "eps": 0.05}
    cfg.grads.strategy = "vmap"
    cfg.grads.layout = "rows"
    cfg.grads.target = "code"
    # The reference's Fisher and distances use the last 10% of the parameter tensors; here
    # the last block's MLP and the final norm (4 of 20 tensors): the K backward passes of
    # the rows layout stop there.
    cfg.grads.param_filter = r"\['blocks'\]\[1\]\['mlp'\]|final_norm"
    return cfg
