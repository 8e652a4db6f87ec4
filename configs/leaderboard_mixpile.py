"""The method leaderboard: every registered mixing method on one corpus, one model, one budget.

(Except ``moe_dynamic``, which reads the expert routing of a mixture-of-experts model and so
cannot run on the leaderboard's dense model: configs/lm_tiny_moe_dynamic_mix.py compares it
with the uniform mixture on the MoE model, docs/experts.md.)

Command (the table of docs/leaderboard.md):
    python experiments/leaderboard_mixpile.py --size tiny --seeds 3 --out runs/leaderboard_tiny
    python experiments/leaderboard_mixpile.py --size mixpile --seeds 3 --out runs/leaderboard_mixpile
(the second needs `mixjax data build mixpile` first; resumable: rerun the same command.)

Sizes (every method gets the same model, data order per seed, eval sets and token budget):
  tiny     mixpile-tiny, 2 layers d_model 64 (~0.1M parameters, byte vocabulary), 16 x 64 tokens x 150 steps
           = 153,600 training tokens per run; 32 eval sequences of 65 tokens per domain. CI slow tier.
  mixpile  mixpile (27 MB), 2 layers d_model 128 (~0.5M parameters), 16 x 128 tokens x 300 steps
           = 614,400 training tokens per run; 64 eval sequences of 129 tokens per domain (~8 KB of
           each domain's 128 KB+ validation split). Sized for about 2 h of an idle 2-core CPU for
           24 methods x 3 seeds (extrapolated from the tiny table's 473 s: ~16x the compute per run;
           500 steps would have been ~3.4 h). Under the load of other jobs (load average 15-18) a
           500-step run took 330 s.

DoReMi and tDRO read a frozen reference model: the baseline's seed-0 run of the same grid
(trained first; its budget is not counted in theirs, as in the DoReMi paper).
Runtime and results: docs/leaderboard.md.
"""

from __future__ import annotations

from mixjax.config import Config

BASELINE = "stratified_uniform"
# mixpile-tiny and mixpile share these domains (mixjax.data.corpus.recipes)
DOMAINS = ("code", "conversation", "legal", "literature", "math", "news", "science", "tech_docs")
NEEDS_REFERENCE = ("doremi", "tdro", "drrho")
# Methods that read a trained policy (the Data Mixing Agent): experiments/leaderboard_mixpile.py
# trains it first with `mixjax search agent configs/search_tiny_agent.py` (same 8 domains,
# same proxy model; its budget is not counted in the agent's, like a reference model's).
NEEDS_POLICY = ("agent",)


def base(size: str = "tiny") -> Config:
    cfg = Config(name=BASELINE)
    if size == "tiny":
        cfg.data.corpus = "mixpile-tiny"
        cfg.data.seq_len, cfg.data.batch_size = 64, 16
        cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 64, 2, 4
        cfg.train.steps, cfg.eval.num_seqs = 150, 32
    elif size == "mixpile":
        cfg.data.corpus = "mixpile"
        cfg.data.seq_len, cfg.data.batch_size = 128, 16
        cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 128, 2, 4
        cfg.train.steps, cfg.eval.num_seqs = 300, 64
    else:
        raise ValueError(f"unknown leaderboard size {size!r}; known: tiny, mixpile")
    cfg.data.tokenizer = "byte"
    cfg.data.sampler = "stratified"     # the baseline: every domain equally often in every batch
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 20
    cfg.train.eval_every = cfg.train.steps // 2
    cfg.train.ckpt_every = cfg.train.steps // 2
    cfg.mixing.name = "uniform"
    return cfg


def _method(cfg: Config, name: str) -> Config:
    """``cfg`` (the baseline) turned into method ``name`` (hyperparameters of configs/lm_tiny_*.py)."""
    cfg.name = name
    m, d, g = cfg.mixing, cfg.data, cfg.grads
    if name == BASELINE:
        pass
    elif name == "uniform":
        d.sampler = "multinomial"
    elif name == "natural":
        d.sampler, m.name = "multinomial", "natural"
    elif name == "temperature":
        d.sampler, m.name, m.hparams = "multinomial", "temperature", {"tau": 3.0}
    elif name == "groupdro":
        d.sampler, m.name, m.hparams = "multinomial", "groupdro", {"step_size": 0.01}
    elif name == "doremi":
        m.name, m.hparams = "doremi", {"eta": 1.0, "smoothing": 1e-3, "vocab_size": 264}
        m.sampling_weights = "uniform"
    elif name == "tdro":
        m.name, m.hparams = "tdro", {"step_size": 0.02, "max_grad_norm": 1.0}
        m.sampling_weights = "uniform"
    elif name == "odm":
        d.sampler, m.name, m.hparams = "multinomial", "odm", {"warmup_steps": 20}
    elif name == "odm_smoothed":
        d.sampler, m.name, m.hparams = "multinomial", "odm_smoothed", {"warmup_steps": 20}
    elif name == "ado":
        d.sampler, m.name = "multinomial", "ado"
        m.hparams = {"ignore_steps": 20, "start_step": cfg.train.steps // 4, "refit_every": 25,
                     "record_every": 2, "history": 128}
    elif name == "doge":
        d.sampler, m.name, m.sampling_weights = "per_domain", "doge", "uniform"
        m.hparams = {"target": "universal", "mu": 0.01}
        g.strategy = "vmap"
    elif name == "dga":   # target: code, here one of the training domains (same eval sets for all)
        d.sampler, m.name = "multinomial", "dga"
        m.hparams = {"eta": 1.0, "ema": 0.5, "eps": 0.05, "start_step": 20}
        g.strategy, g.target = "jvp", "code"
    elif name == "rnb":
        d.sampler, m.name = "multinomial", "rnb"
        m.hparams = {"lam": 1.0, "update_every": 1, "eps": 0.05}
        g.strategy, g.layout = "vmap", "rows"
    elif name == "bilevel":
        d.sampler, m.sampling_weights = "per_domain", "uniform"
        cfg.train.objective, cfg.train.objective_hparams = "bilevel", {"penalty": 10.0, "lr_p": 0.05}
        g.target = "code"
    elif name == "sample_reweight":
        d.sampler = "multinomial"
        m.sample_reweight, m.sample_reweight_hparams = "quadratic", {"temperature": 1.0, "burn_in": 50}
    elif name == "prospect":   # configs/lm_tiny_prospect.py
        d.sampler, m.name = "multinomial", "prospect"
        m.hparams = {"spectrum": "extremile", "level": 2.0, "penalty": "chi2", "shift_cost": 1.0}
    elif name == "feasible":   # configs/lm_tiny_feasible.py
        d.sampler, m.name = "multinomial", "feasible"
        m.hparams = {"eps": 2.5, "dual_lr": 1.0, "slack_decay": 1.0}
    elif name == "iwrm":   # configs/lm_tiny_iwrm.py
        d.sampler, m.name = "multinomial", "iwrm"
        m.hparams = {"norm_eps": 1e-4, "reg_eps": 1e-4}
        g.strategy = "vmap"
    elif name == "drrho":   # configs/lm_tiny_drrho.py: uniform sampling, sequences weighted in-batch
        d.sampler, m.name, m.hparams = "multinomial", "drrho", {"tau": 1.0}
    elif name == "toremi":   # configs/lm_tiny_toremi.py: adjust every steps/15, stage 2 at 70%
        m.name, m.sampling_weights = "toremi", "uniform"
        m.hparams = {"adjust_every": cfg.train.steps // 15, "switch_step": int(0.7 * cfg.train.steps)}
    elif name == "dids":   # configs/lm_tiny_dids.py; target code, here a training domain (as dga)
        d.sampler, m.name = "multinomial", "dids"
        m.hparams = {"update_every": cfg.train.steps // 15, "beta": 0.2, "eps": 0.05}
        g.strategy, g.layout, g.target = "vmap", "rows", "code"
        g.param_filter = r"\['blocks'\]\[1\]\['mlp'\]|final_norm"   # the last layer's MLP
    elif name in ("aioli", "skillit"):   # configs/lm_tiny_{aioli,skillit}.py, rounds of steps // 3
        d.sampler, m.name = "multinomial", name
        rounds = {"update_steps": cfg.train.steps // 3}
        m.hparams = ({"eta": 1.0, "lp_rounds": 1, "lp_steps": 2, **rounds} if name == "aioli" else
                     {"eta": 0.2, "window": 3, "graph": "identity", **rounds})
    elif name in ("pcgrad", "mgda", "upgrad", "upgrad_target"):   # configs/lm_tiny_{pcgrad,...}.py
        d.sampler, m.name, m.sampling_weights = "per_domain", name, "uniform"
        m.hparams = {"pcgrad": {"seed": 0}, "mgda": {"epsilon": 1e-3, "max_iters": 100},
                     "upgrad": {"norm_eps": 1e-4, "reg_eps": 1e-4},
                     "upgrad_target": {"temperature": 0.1}}[name]
        g.strategy = "vmap"
        if name == "upgrad_target":   # preference towards code, as DGA's target
            g.target = "code"
    # Schedules (mixjax.mixing.schedules): one fixed recipe each, code and math upweighted late.
    elif name == "upsample_end":   # configs/lm_tiny_schedule_upsample.py around uniform
        d.sampler, m.name = "multinomial", "upsample_end"
        m.hparams = {"base": "uniform", "factors": {"code": 5.0, "math": 5.0}, "fraction": 0.2}
    elif name == "staged":
        d.sampler, m.name = "multinomial", "staged"
        late = {dom: (5.0 if dom in ("code", "math") else 1.0) for dom in DOMAINS}
        m.hparams = {"unit": "fraction", "stages": [
            {"start": 0.0, "end": 0.8, "weights": {dom: 1.0 for dom in DOMAINS}},
            {"start": 0.8, "end": 1.0, "weights": late}]}
    elif name == "linear_schedule":
        d.sampler, m.name = "multinomial", "linear_schedule"
        late = {dom: (5.0 if dom in ("code", "math") else 1.0) for dom in DOMAINS}
        m.hparams = {"unit": "fraction", "knots": [
            {"at": 0.0, "weights": {dom: 1.0 for dom in DOMAINS}}, {"at": 1.0, "weights": late}]}
    elif name in ("dreamprm", "meta_weight_net"):   # configs/lm_tiny_dreamprm.py; target code
        d.sampler, cfg.train.objective = "multinomial", name
        cfg.train.objective_hparams = ({"weights": "table", "penalty": 10.0, "lr_p": 0.05}
                                       if name == "dreamprm" else {"penalty": 10.0})
        g.target = "code"
    elif name == "agent":   # configs/search_tiny_agent.py: the policy decides every 30 steps
        # stratified batches with loss weights w_d / share_d: the route its trajectories used
        m.name = "agent"
    else:
        raise ValueError(f"unknown leaderboard method {name!r}; known: {', '.join(METHODS)}")
    return cfg


METHODS = (BASELINE, "uniform", "natural", "temperature", "groupdro", "doremi", "tdro", "odm", "odm_smoothed",
           "ado", "doge", "dga", "rnb", "bilevel", "sample_reweight",
           # second round (docs/mixing.md); not yet in the published table of docs/leaderboard.md
           "aioli", "skillit", "pcgrad", "mgda", "upgrad", "upgrad_target",
           "upsample_end", "staged", "linear_schedule",
           # sample-level rules (docs/selection.md)
           "prospect", "feasible", "iwrm", "dreamprm", "meta_weight_net",
           # third round (docs/mixing.md)
           "drrho", "toremi", "dids", "agent")


def configs(size: str = "tiny", methods=METHODS, reference: str | None = None,
            policy: str | None = None) -> list[Config]:
    """One Config per method; ``reference`` (a run dir) and ``policy`` (an agent policy file)
    for the methods that need one."""
    out = []
    for name in methods:
        cfg = _method(base(size), name)
        if name in NEEDS_REFERENCE:
            if reference is None:
                raise ValueError(f"method {name!r} needs a reference run (train.reference)")
            cfg.train.reference = reference
        if name in NEEDS_POLICY:
            if policy is None:
                raise ValueError(f"method {name!r} needs a policy (mixjax search agent)")
            cfg.mixing.hparams = {"policy": policy}
        out.append(cfg)
    return out


def get_config() -> Config:
    """The baseline of the tiny leaderboard (so `mixjax train configs/leaderboard_mixpile.py` works)."""
    return base("tiny")
