"""DoGE proxy on mixpile-tiny (Fan et al. 2024, arXiv 2310.15393): universal target.

Command (the whole recipe: DoGE proxy -> base model on the averaged weights vs
the baseline):
    mixjax mix doge configs/lm_tiny_doge.py
Just the proxy:
    mixjax train configs/lm_tiny_doge.py --set train.run_dir=runs/tiny_doge
Variants:
    out-of-domain target (code's validation split):
        --set mixing.hparams.target=ood --set grads.target=code
    bounded memory: --set grads.strategy=chunked --set grads.chunk_size=2

DoGE acts on the gradient (sum_d alpha_d g_d); the sampler stays uniform and
stratified (B/K sequences per domain) for the vmap gradient engine.
mu = 0.01 is the reference's shipped universal setting (0.05 for OOD).
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_doge")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.tokenizer = "byte"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 16
    cfg.data.sampler = "per_domain"
    cfg.model.d_model = 128
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.train.steps = 200
    cfg.train.eval_every = 100
    cfg.train.ckpt_every = 100
    cfg.train.run_dir = "runs/lm_tiny_doge"
    cfg.eval.num_seqs = 16
    cfg.mixing.name = "doge"
    cfg.mixing.hparams = {"target": "universal", "mu": 0.01}
    cfg.mixing.sampling_weights = "uniform"
    cfg.grads.strategy = "vmap"
    return cfg
