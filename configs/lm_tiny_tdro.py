"""tDRO (Ma et al. 2025) proxy run on mixpile-tiny: log-weights ascend the loss ratio proxy/reference.

Commands (the reference is the tiny uniform run):
    mixjax train configs/lm_tiny_uniform.py                      # -> runs/lm_tiny_uniform
    mixjax train configs/lm_tiny_tdro.py --set train.run_dir=runs/tiny_tdro

Uniform sampling; domain-d tokens weighted by alpha_d / p_d. The reference
script's step size 0.02 and gradient-norm clip 1 are kept; the final alpha
(``weights``) is tDRO's output mixture.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_tdro")
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
    cfg.eval.num_seqs = 16
    cfg.train.run_dir = "runs/lm_tiny_tdro"
    cfg.train.reference = "runs/lm_tiny_uniform"
    cfg.mixing.name = "tdro"
    cfg.mixing.hparams = {"step_size": 0.02, "max_grad_norm": 1.0}
    cfg.mixing.sampling_weights = "uniform"
    cfg.data.sampler = "stratified"              # every domain in every batch (2 rows each)
    return cfg
