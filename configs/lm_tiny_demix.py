"""A tiny DEMix LM on mixpile-tiny: one domain-expert FFN per domain (laptop CPU).

Command:
    mixjax train configs/lm_tiny_demix.py --set train.run_dir=runs/lm_tiny_demix
Runtime and result (shared 2-core CPU, 200 steps, seed 0): 1 min 54 s wall (36 s user
    CPU, 0.57 GB peak RSS); uniform-average validation loss of the uniform-prior ensemble
    2.860 (perplexity 17.9), worst domain code (perplexity 24.7).

Model (``model.kind=demix``, mixjax.models.demix, docs/experts.md): the 2-layer d_model 128
transformer of configs/lm_tiny_uniform.py whose MLPs are 8 domain experts (one per
mixpile-tiny domain, hidden size 88 each). Training sends each sequence through its
domain's expert; evaluation (every eval_every steps and at the end) runs the parameter-free
ensemble: per position, the posterior over domains from each expert's likelihood of the
prefix, uniform prior (9 forward passes per evaluated batch: one per expert and the
mixture). The sampler is stratified: every domain's expert sees 2 sequences per step.

Afterwards (docs/experts.md sec. 4 and 6; timings on a 20-step run of this config, shared
2-core CPU): ``mixjax export runs/lm_tiny_demix --format safetensors`` (3.8 s wall) writes
the experts with their domain order; ``mixjax demix runs/lm_tiny_demix --remove math
--out-run runs/lm_tiny_demix_rm`` (6.8 s) writes a 7-expert run at the same step with the
Adam, mixer and sampler state edited, and ``mixjax train runs/lm_tiny_demix_rm/config.json
--resume --set train.steps=205`` continues it (5 more steps: 25 s wall, mostly compile).
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_demix")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.tokenizer = "byte"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 16
    cfg.data.sampler = "stratified"
    cfg.model.kind = "demix"
    cfg.model.d_model = 128
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.model.hparams = {"num_experts": 8, "expert_d_ff": 88}
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.train.steps = 200
    cfg.train.eval_every = 100
    cfg.train.ckpt_every = 100
    cfg.train.run_dir = "runs/lm_tiny_demix"
    cfg.eval.num_seqs = 16
    cfg.mixing.name = "uniform"
    return cfg
