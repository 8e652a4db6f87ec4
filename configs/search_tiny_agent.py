"""Data Mixing Agent on mixpile-tiny: random mixing trajectories of 24 proxies -> a policy.

Commands:
    mixjax search agent configs/search_tiny_agent.py --out runs/search_tiny_agent
    mixjax train configs/search_tiny_agent.py --set mixing.name=agent \
        --set mixing.hparams.policy=runs/search_tiny_agent/agent.json \
        --set train.run_dir=runs/tiny_agent_seed0

RESULT_PLACEHOLDER
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
