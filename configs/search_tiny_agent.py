"""Data Mixing Agent on mixpile-tiny: random mixing trajectories of 24 proxies -> a policy.

Commands:
    mixjax search agent configs/search_tiny_agent.py --out runs/search_tiny_agent
    mixjax train configs/search_tiny_agent.py --set mixing.name=agent \
        --set mixing.hparams.policy=runs/search_tiny_agent/agent.json \
        --set train.run_dir=runs/tiny_agent_seed0

Evidence (agent vs uniform, same model, steps, data and seeds; paired over seeds):
    PYTHONPATH=. python experiments/agent_vs_uniform.py \
        --policy runs/search_tiny_agent/agent.json --seeds 1,2,3 --out runs/agent_vs_uniform

Proxies and evaluation runs: this config (2 layers, d_model 64, 16 x 64 tokens per step,
120 steps, evaluation every 30 steps on 16 validation sequences per domain). The search:
24 proxies x 4 intervals of 30 steps, mixtures i.i.d. Dirichlet(1) per interval, one
swarm on the upweight route; policy: history 2, hidden 32, 500 AdamW steps of
advantage-weighted behaviour cloning (temperature 1) on the 96 transitions.

Measured on the 2-core machine shared with other jobs: the search 2 min 35 s
wall (swarm 2 min 17 s); the proxies' final average validation loss ranged 3.304-3.339
(mean 3.318) over the 24 random trajectories. Evidence (6 runs of ~35 s, 3 min wall):
final validation loss averaged over the 8 domains, agent 3.3042 vs uniform 3.2997, paired
difference +0.0045, 95% interval [-0.028, +0.037] (3 seeds); worst domain agent 3.6679 vs
uniform 3.6689, -0.0010 [-0.029, +0.027]. A negative result: at this scale and with 96
transitions the agent is not distinguishable from uniform (its late decisions put up to
~0.5 of the weight on one domain, news or code, and the seed noise is ~0.02).
Variant --alpha 4 (trajectories nearer uniform; search 3 min 10 s, proxies' final loss
3.281-3.328, mean 3.302): agent 3.3026 vs uniform 3.2997, +0.0029 [-0.023, +0.029];
worst domain +0.053 [-0.037, +0.143] (same seeds). Also no measurable gain. Diagnostics of
the alpha 1 search (trajectories.npz): the return-to-go is almost all explained by the
time index (out-of-fold ridge R^2 0.9998; the first interval's loss drop is ~2 nats, the
last's 0.02), so the advantages the policy learns from are residuals of ~0.01 nats, the
size of the seed noise.
"""

from configs.lm_tiny_uniform import get_config as _base


def get_config():
    cfg = _base()
    cfg.name = "search_tiny_agent"
    cfg.data.sampler = "stratified"
    cfg.model.d_model = 64
    cfg.data.seq_len = 64
    cfg.train.steps = 120
    cfg.train.eval_every = 30
    cfg.train.ckpt_every = 60
    cfg.train.log_every = 10
    cfg.train.run_dir = "runs/search_tiny_agent/run"
    return cfg


def get_search():
    return {
        "proxies": 24,
        "design_seed": 0,
        "strategy": "auto",
        "target": "average",
    }
