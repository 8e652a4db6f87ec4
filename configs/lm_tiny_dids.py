"""DIDS (Shi et al. 2025, arXiv 2504.13227) on mixpile-tiny, out-of-domain target.

Command:
    mixjax train configs/lm_tiny_dids.py --set train.run_dir=runs/tiny_dids
Runtime: 200 steps in 53 s wall (78 s user CPU) on the idle 2-core machine, compiles
included, with the model gradient taken from the gradient engine (model_gradient="coeffs");
before that change, 1 min 54 s to 5 min wall (about 92 s user CPU) under load 4-9, and the
uniform mixture on the same 7 domains 66-105 s wall (about 42 s user CPU). Re-run after the
change (seeds 0, 1, 2; code 3.355 / 3.547 / 3.389): the same means and sds as below.
Result (validation at step 200; seeds 0, 1, 2 via --set train.seed=S; mean +- sd):
    DIDS     loss_avg 2.767 +- 0.040   held-out code 3.430 +- 0.103
    uniform  loss_avg 2.767 +- 0.105   held-out code 3.331 +- 0.061
(uniform: mixjax train configs/lm_tiny_uniform.py --set data.sampler=multinomial
 --set "data.domains=[conversation, legal, literature, math, news, science, tech_docs]"
 --set grads.target=code, the same budget). Paired difference DIDS - uniform: loss_avg
-0.000 (95% t-interval [-0.196, +0.195]), code +0.099 ([-0.059, +0.257]): no gain on the
target at this scale; if anything worse. The weights swing from round to round (the
1/alpha factor: a domain sampled heavily in one round has a low utility in the next); in
seed 0, from step ~130 the round-mean target loss stops falling (3.33 -> 3.39), the
effective improvement turns negative, every utility is floored at 1e-7 except the
farthest domain's (impact 0, utility exactly 0, which the reference does not floor) and
the weights sit near uniform with that one domain at the eps floor.

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
    several targets (num_targets follows grads.target):
        --set "grads.target=[code, math]"
        --set "data.domains=[conversation, legal, literature, news, science, tech_docs]"
    DIDS' regrouping half first (clusters as domains, mixjax/data/regroup.py):
        mixjax data regroup mixpile-tiny --k 8 --svd 64 --out runs/regroup_tiny_k8
        mixjax train configs/lm_tiny_dids.py --set data.spec=runs/regroup_tiny_k8/spec.json
            --set data.domains=None --set grads.target=c00
        (the clusters are the domains; the target is then one of them and is trained on too,
        as in the leaderboard's dids entry). Not run here.
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
