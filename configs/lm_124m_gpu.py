"""GPT-2-small-sized LM (124M parameters with the GPT-2 vocabulary) on a GPU node or cluster.

bf16 compute with fp32 parameters and optimizer state, cuDNN flash attention
(``model.attention=auto``), full-logits loss (``model.loss_chunk=0``); 0.5M tokens per step
(512 sequences x 1024 tokens, 4 micro-batches), data-parallel over every GPU
(``mesh.data=-1``). The mixer is a static one so the config loads anywhere; pick
another with ``--set mixing.name=doremi`` (see docs/mixing.md).

Needs: the ``mixpile`` corpus (``mixjax data build mixpile``) and the tiktoken
``gpt2`` encoding in tiktoken's local cache (``pip install mixjax[tokenizers]``).

Commands (docs/scaling.md):
    # one node, 8 GPUs, one process:
    mixjax train configs/lm_124m_gpu.py --resume --set train.run_dir=runs/gpt124m
    # a SLURM cluster, 2 nodes x 8 GPUs, one process per GPU:
    scripts/launch_slurm.sh --nodes 2 --gpus-per-node 8 -- \
        mixjax train configs/lm_124m_gpu.py --resume --set train.run_dir=/shared/runs/gpt124m

Expected: sized for 8 GPUs (16 sequences per GPU per micro-step). On ONE GPU the
micro-step of 128 x 1024 tokens needed 204 GiB with xla attention and did not fit an H200:
use ``--set train.grad_accum=8`` there or less data per step. Measured on one H200 at
64 x 1024 tokens per step (``benchmarks/bench_gpu_mfu.py --batch-size 64 --grad-accum 1``,
jax 0.11.2): 511k tokens/s, 44.2% MFU for the plain step with this config's kernels
(cuDNN attention, full loss), against 249k tokens/s, 21.5% with xla attention; DoReMi
1.27x, DoGE (vmap) 1.16x, DGA (jvp) 2.87x the plain step's time with the chunked loss
(docs/scaling.md).
"""

from mixjax.config import Config


def get_config() -> Config:
    cfg = Config(name="lm_124m_gpu")
    cfg.data.corpus = "mixpile"
    cfg.data.tokenizer.kind = "tiktoken"   # GPT-2 BPE (50257 tokens + PAD/BOS; model vocab 50304)
    cfg.data.seq_len = 1024
    cfg.data.batch_size = 512              # global batch, over all processes
    cfg.data.workers = 4
    cfg.model.d_model = 768
    cfg.model.num_layers = 12
    cfg.model.num_heads = 12
    cfg.model.mlp = "gelu"                 # GPT-2 MLP: d_ff = 4 d_model
    cfg.model.tie_embeddings = True
    # Precision and kernels (docs/scaling.md, "Precision and kernels"): bf16 matmuls with
    # fp32 parameters, optimizer state and loss; cuDNN flash attention. The loss is not
    # chunked: 16 sequences per GPU per micro-step hold 3.3 GB of fp32 logits, which fit,
    # and the chunked loss recomputes the logits in the backward pass (0.164 vs 0.128 s per
    # step on one H200 at 64 x 1024). Set model.loss_chunk=256 where memory is the limit
    # (e.g. --set train.grad_accum=2 on a single GPU).
    cfg.model.dtype = "bfloat16"
    cfg.model.param_dtype = "float32"
    cfg.model.attention = "auto"           # cudnn on a GPU (xla on CPU)
    cfg.model.loss_chunk = 0
    cfg.optim.lr = 6e-4
    cfg.optim.warmup_steps = 700
    cfg.optim.min_lr_ratio = 0.1
    cfg.optim.weight_decay = 0.1
    cfg.train.steps = 20000                # ~10B tokens
    cfg.train.grad_accum = 4               # 128 sequences per micro-step
    cfg.train.eval_every = 500
    cfg.train.ckpt_every = 500
    cfg.train.log_every = 10
    cfg.train.run_dir = "runs/lm_124m_gpu"
    cfg.train.progress = False
    cfg.mixing.name = "natural"
    cfg.mesh.data = -1                     # every GPU of every process
    cfg.mesh.fsdp = 1
    cfg.mesh.tensor = 1
    return cfg
