"""A tiny LM on mixpile-tiny with the uniform mixture (laptop CPU, about a minute).

Command:
    mixjax train configs/lm_tiny_uniform.py --set train.run_dir=runs/tiny_uniform
Variants:
    --set mixing.name=temperature --set mixing.hparams.tau=3.0
    --set mixing.name=natural --set mixing.apply_to=loss

Model: 2 layers, d_model 128, byte vocabulary (~0.5M parameters); 16 x 128
tokens per step.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_uniform")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.tokenizer = "byte"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 16
    cfg.model.d_model = 128
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.train.steps = 200
    cfg.train.eval_every = 100
    cfg.train.ckpt_every = 100
    cfg.train.run_dir = "runs/lm_tiny_uniform"
    cfg.eval.num_seqs = 16
    cfg.mixing.name = "uniform"
    return cfg
