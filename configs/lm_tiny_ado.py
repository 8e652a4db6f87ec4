"""ADO (Jiang et al. 2025) on mixpile-tiny: sampling from per-domain power-law fits of the loss.

Command:
    mixjax train configs/lm_tiny_ado.py --set train.run_dir=runs/tiny_ado

Each domain's training loss is fitted with L(n) = e^E + e^A n^-alpha inside the
compiled step (every ``refit_every`` steps, on a ring buffer of block-mean
losses); domains still learning fast get sampled more. The
reference's schedule (ignore 1000, start 1000, refit every 1000 of 60k steps)
is scaled to a 200-step run.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_ado")
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
    cfg.train.run_dir = "runs/lm_tiny_ado"
    cfg.mixing.name = "ado"
    cfg.mixing.hparams = {"ignore_steps": 20, "start_step": 50, "refit_every": 25,
                          "record_every": 2, "history": 128}
    return cfg
