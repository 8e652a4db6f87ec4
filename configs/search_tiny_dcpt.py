"""D-CPT law on mixpile-tiny: continue two small pre-trained models on news (general) + code
(domain) at 7 domain ratios, fit the law, pick the ratio under a general-loss budget.

Commands (a fresh clone; the two pre-trained runs first, 24-35 s each):
    for d in 32 64; do mixjax train configs/lm_tiny_uniform.py --set model.d_model=$d \
        --set model.num_layers=1 --set model.num_heads=2 --set data.seq_len=32 \
        --set data.batch_size=8 --set train.steps=100 --set train.eval_every=0 \
        --set train.run_dir=runs/dcpt_pre$d; done
    mixjax search dcpt configs/search_tiny_dcpt.py \
        --init-from runs/dcpt_pre32,runs/dcpt_pre64 --out runs/search_tiny_dcpt
Variants:
    --search-set tau=0.02                  (a tighter general-loss budget)
    --search-set target_domain_loss=2.5    (also: the smallest ratio reaching that code loss)
    --search-set seeds_per_mixture=3       (each ratio under 3 seeds in the same swarm)

Proxies: each continues its run's parameters (model.init_from; the proxy takes the run's
shape: 1 layer, d_model 32 or 64) for 60 steps of 8 x 32 tokens, evaluated every 15
steps (the law's D axis), one swarm per run (the N axis). Target (N, D) for the usages:
the d_model-64 model continued for 240 steps. Output: fit.json (both laws, held-out
check on each proxy's final evaluation, the usages, the trade-off curve), weights.json
(general 1 - r, domain r), dcpt.png.

Measured on the 2-core machine shared with other jobs: the search 1 min 8 s wall (48 s CPU;
two swarms of 7 proxies, 11 s each after compilation). Result of that run: held-out
relative error on the final evaluations 0.64% (general) and 1.35% (domain); chosen ratio
r = 0.904 (code 0.904, news 0.096) at general loss 3.381 = 1.05 x general-only. The
general law's least-squares fit reported no convergence (its gamma went to ~0: the C term
became a constant traded against E), recorded as a warning in fit.json; its predictions
still pass the held-out check. Two model sizes only: the N extrapolation is weakly
supported.
"""

from configs.lm_tiny_uniform import get_config as _base


def get_config():
    cfg = _base()
    cfg.name = "search_tiny_dcpt"
    cfg.data.sampler = "stratified"
    cfg.data.seq_len = 32
    cfg.data.batch_size = 8
    cfg.model.d_model = 64
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.optim.warmup_steps = 5
    cfg.train.steps = 240
    cfg.train.run_dir = "runs/search_tiny_dcpt/target"
    cfg.eval.num_seqs = 8
    return cfg


def get_search():
    return {
        "general": "news",
        "domain": "code",
        "ratios": [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
        "tau": 0.05,
        "route": "upsample",
        "strategy": "auto",
        "proxy_overrides": ["train.steps=60", "train.eval_every=15", "train.ckpt_every=60",
                            "train.log_every=20"],
    }
