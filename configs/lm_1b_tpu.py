"""A ~1.3B-parameter (1.28B with the 50k vocabulary) Llama-style LM on a Cloud TPU v4/v5 slice.

d_model 2048, 16 layers, 16 heads, SwiGLU d_ff 8192, GPT-2 BPE vocabulary (untied);
bf16 compute with fp32 parameters and optimizer state, a chunked cross-entropy
(``model.loss_chunk=512``), fully sharded over the slice
(``mesh.fsdp=-1``: parameters, gradients and Adam moments split along ``embed`` over
every chip, ZeRO-3 style; the batch is split over the same axis); 1M tokens per step
(512 x 2048, 2 micro-batches). The mixer is a static one so the config loads anywhere;
pick another with ``--set mixing.name=...`` (docs/mixing.md).

Needs: the ``mixpile`` corpus (``mixjax data build mixpile``), the tiktoken ``gpt2``
encoding in tiktoken's local cache (``pip install mixjax[tokenizers]``) and a run dir
every worker sees (a gcsfuse mount or a shared filesystem: checkpoints are written by
all hosts).

Command (docs/scaling.md), on a v4-32 slice (16 chips, 4 hosts):
    scripts/launch_tpu.sh --name mix-v4-32 --zone us-central2-b --accelerator v4-32 --spot -- \
        mixjax train configs/lm_1b_tpu.py --resume --set train.run_dir=/gcs/BUCKET/runs/lm_1b

Expected: not measured (no TPU was available when this was written).
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_1b_tpu")
    cfg.data.corpus = "mixpile"
    cfg.data.tokenizer.kind = "tiktoken"   # gpt2 encoding; model vocab 50304 (padded to 128)
    cfg.data.seq_len = 2048
    cfg.data.batch_size = 512              # global batch, over all hosts
    cfg.data.workers = 8
    cfg.model.d_model = 2048
    cfg.model.num_layers = 16
    cfg.model.num_heads = 16
    cfg.model.d_ff = 8192
    cfg.model.mlp = "swiglu"
    cfg.model.tie_embeddings = False
    # Precision and kernels (docs/scaling.md): bf16 matmuls with fp32 parameters, optimizer
    # state and loss; the cross-entropy 512 positions at a time (never the whole fp32
    # [B, T, 50304] logits). attention=auto is the Pallas splash kernel on a single TPU
    # chip; under this config's multi-chip fsdp mesh it resolves to xla (the kernel is not
    # wrapped in a shard_map yet, mixjax.models.transformer.resolve_attention).
    cfg.model.dtype = "bfloat16"
    cfg.model.param_dtype = "float32"
    cfg.model.attention = "auto"
    cfg.model.loss_chunk = 512
    cfg.optim.lr = 3e-4
    cfg.optim.warmup_steps = 2000
    cfg.optim.weight_decay = 0.1
    cfg.train.steps = 50000                # ~50B tokens
    cfg.train.grad_accum = 2
    cfg.train.eval_every = 1000
    cfg.train.ckpt_every = 500
    cfg.train.log_every = 10
    cfg.train.run_dir = "runs/lm_1b_tpu"
    cfg.train.progress = False
    cfg.mixing.name = "natural"
    cfg.mesh.data = 1
    cfg.mesh.fsdp = -1                     # every chip of the slice
    cfg.mesh.tensor = 1
    return cfg
