"""SFT effective-data law on mixpile-tiny: continue one small pre-trained model on 25
mixtures of the 8 domains, fit each domain's law in own + transferred tokens, and solve
for the mixture minimising the average loss at the target's token budget.

Commands (a fresh clone; the pre-trained run first, ~25 s):
    mixjax train configs/lm_tiny_uniform.py --set model.d_model=64 \
        --set model.num_layers=1 --set model.num_heads=2 --set data.seq_len=32 \
        --set data.batch_size=8 --set train.steps=100 --set train.eval_every=0 \
        --set train.run_dir=runs/dcpt_pre64
    mixjax search sft configs/search_tiny_sft.py --init-from runs/dcpt_pre64 \
        --out runs/search_tiny_sft
Variants:
    --search-set target=code               (minimise one domain's loss)
    --search-set proxies=16                (more Dirichlet mixtures beside the perturbations)

The fine-tuning domains are mixpile-tiny's 8 training domains (mixjax ships no
instruction-formatted corpus; no templating is applied). Swarm: the uniform mixture,
each domain halved and doubled (the paper's one-domain perturbations, 16) and 8
Dirichlet mixtures, 60 steps of 8 x 32 tokens from the pre-trained parameters,
evaluated every 15 steps; every evaluation is one (tokens per domain, losses) point.
Output: fit.json (the law per domain, the transfer matrix, the held-out check on each
proxy's final evaluation), weights.json, fit.png.

Measured on the 2-core machine shared with other jobs: 3 min 26 s wall (114 s CPU; most
of it the 8 per-domain fits, twice each). Result of that run: held-out MAE on the final
evaluations 0.023 (0.68% relative); found mixture news 0.50, math 0.18, code 0.09, the
rest 0.01-0.07; one domain's fit reported no convergence (warning in fit.json). No target
model is trained on it here (compare it with `mixjax train ... --set mixing.name=manual`,
the line weights.json gives).
"""

from configs.search_tiny_dcpt import get_config as _base


def get_config():
    cfg = _base()
    cfg.name = "search_tiny_sft"
    cfg.train.run_dir = "runs/search_tiny_sft/target"
    return cfg


def get_search():
    return {
        "proxies": 8,
        "design": "dirichlet",
        "target": "average",
        "route": "upsample",
        "strategy": "auto",
        "law_restarts": 8,
        "proxy_overrides": ["train.steps=60", "train.eval_every=15", "train.ckpt_every=60",
                            "train.log_every=20"],
    }
