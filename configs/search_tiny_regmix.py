"""RegMix on mixpile-tiny: 32 proxies (~0.12 M parameters) in one swarm, then 3 target models.

Command:
    mixjax search regmix configs/search_tiny_regmix.py --out runs/search_tiny_regmix
Variants:
    --proxies 64                       (more proxies: a better fit, twice the swarm time)
    --search-set route=upweight        (one shared stratified batch, loss weights h/share)
    --search-set target=code           (minimise one domain's loss; or {"code": 0.5, ...})
    --no-target                        (stop after the search: weights.json only)
    mixjax search law configs/search_tiny_regmix.py --proxies 16 --sizes 32,64,96 \
        --proxy-set train.eval_every=50 --no-target --out runs/search_tiny_sizes
                                       (Shukor et al.'s L(N, D, h) over three proxy sizes,
                                        the largest held out: 2 min 51 s idle; held-out
                                        relative error 2.7%, Spearman 0.60; docs/search.md)

Proxies: the target config with ``get_search()["proxy_overrides"]`` (2 layers, d_model
64, 64-token sequences, 150 steps); mixtures from RegMix's Dirichlet generator around
the token distribution; per-proxy eval on 16 validation sequences per domain. Target
models: configs/lm_tiny_uniform.py (0.5 M parameters, 200 steps) on the found mixture,
the uniform and the natural mixture.

Measured on the idle 2-core machine (docs/search.md, section 5): 2 min 33 s wall for the
whole command (260 s CPU; the swarm phase 75 s). Expect a weak fit: in that run the linear
model won the out-of-fold comparison (Spearman 0.66) and extrapolated to a vertex (99.6%
tech_docs), a mixture worse than uniform on 7 of 8 domains. An earlier run under load
(18 min 50 s wall) fitted LightGBM (Spearman 0.30 with min_data_in_leaf 3) and found a mixture
better than uniform on code and on the worst domain only (target models, 3 seeds,
uniform-average validation perplexity: found 18.80 ± 2.54, uniform 17.45 ± 0.71, natural
17.88 ± 1.23; per-domain table in docs/search.md).
"""

from configs.lm_tiny_uniform import get_config as _base


def get_config():
    cfg = _base()
    cfg.name = "search_tiny_regmix"
    cfg.data.sampler = "stratified"
    cfg.train.run_dir = "runs/search_tiny_regmix/target"
    return cfg


def get_search():
    return {
        "proxies": 32,
        "design": "regmix",
        "route": "upsample",
        "strategy": "auto",
        "target": "average",
        "regressor": "auto",
        # 32 proxies: LightGBM's default min_data_in_leaf (20) allows no split at all
        # (a flat model, see docs/search.md); RegMix fitted 512 proxies
        "lgbm_params": {"min_data_in_leaf": 3},
        "proxy_overrides": ["model.d_model=64", "model.num_layers=2", "model.num_heads=4",
                            "data.seq_len=64", "train.steps=150", "train.eval_every=0",
                            "train.ckpt_every=50", "train.log_every=10"],
    }
