"""Dynamic data mixing for MoE (arXiv 2406.11256) on the tiny MoE LM of configs/lm_tiny_moe.py.

Command:
    mixjax train configs/lm_tiny_moe_dynamic_mix.py --set train.run_dir=runs/lm_tiny_moe_dynamic
Runtime and result: RESULT_PLACEHOLDER

Mixer ``moe_dynamic`` (mixjax.mixing.moe_dynamic, docs/experts.md): every 25 steps each
domain's routing representation (tokens per expert per MoE block in the batch, normalised)
is compared with the others' by cosine similarity, and the sampling weights move towards
the least redundant domains (eta 10, smoothing 0.05: the reference's defaults). Same model,
data, budget and seed as configs/lm_tiny_moe.py (uniform mixture), its baseline.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_moe_dynamic_mix")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.tokenizer = "byte"
    cfg.data.seq_len = 128
    cfg.data.batch_size = 16
    cfg.model.kind = "moe"
    cfg.model.d_model = 128
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.model.hparams = {"num_experts": 8, "top_k": 2, "capacity_factor": 1.25,
                         "aux_loss_coef": 0.01, "z_loss_coef": 0.001, "expert_d_ff": 88}
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 20
    cfg.train.steps = 200
    cfg.train.eval_every = 100
    cfg.train.ckpt_every = 100
    cfg.train.run_dir = "runs/lm_tiny_moe_dynamic_mix"
    cfg.eval.num_seqs = 16
    cfg.mixing.name = "moe_dynamic"
    cfg.mixing.hparams = {"eta": 10.0, "smoothing": 0.05, "update_every": 25}
    return cfg
