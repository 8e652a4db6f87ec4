"""A tiny mixture-of-experts LM on mixpile-tiny (uniform mixture; laptop CPU).

Command:
    mixjax train configs/lm_tiny_moe.py --set train.run_dir=runs/lm_tiny_moe
Runtime and result (measured on a shared 2-core CPU, 200 steps): 2 min 9 s wall (52 s
    user CPU, 0.66 GB peak RSS); uniform-average validation loss 2.818 (perplexity 17.3),
    worst domain math (perplexity 24.6). Seeds 1 and 2 (--set train.seed=S): 2.834, 2.815.
Variants:
    --set mesh.expert=4 --set mesh.data=2     expert parallelism (8 devices)
    --set model.hparams.top_k=1               Switch routing (gate = router probability)

Model (``model.kind=moe``, mixjax.models.moe, docs/experts.md): the 2-layer d_model 128
transformer of configs/lm_tiny_uniform.py with each MLP replaced by 8 SwiGLU experts,
top-2 token-choice routing, capacity factor 1.25, load-balancing loss 0.01 and router
z-loss 0.001 added to the training loss. Expert hidden size 88 (a quarter of the dense
MLP's 344), so two active experts cost about half the dense MLP's FLOPs.
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_tiny_moe")
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
    cfg.train.run_dir = "runs/lm_tiny_moe"
    cfg.eval.num_seqs = 16
    cfg.mixing.name = "uniform"
    return cfg
