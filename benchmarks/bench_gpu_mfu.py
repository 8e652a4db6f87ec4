"""Training throughput and MFU of the 124M config for plain training, DoReMi, DoGE and DGA,
and A/B comparisons of the attention kernel and the loss on the plain step.

Runs the real train step (``mixjax.core.step``, placed and jitted by
``mixjax.parallel.sharding`` over every local device, ``mesh.data=-1`` as in
``configs/lm_124m_gpu.py``) for N timed steps per variant, side by side in one
process, on synthetic token batches (throughput does not depend on the text):

* ``plain``      uniform mixture, one forward + backward;
* ``doremi``     + a frozen reference model's forward (excess loss per token);
* ``doge-vmap``  DoGE (universal target): K per-domain gradients by
                 ``vmap(grad)`` over the stratified batch, Gram matrix, combined gradient;
* ``doge-jvp``   DoGE needs ``gram``/``grad_norm``, which ``grads.strategy=jvp``
                 cannot supply (one direction only): reported as not runnable (only when
                 asked for with ``--variants``), so
* ``dga-jvp``    the jvp path is measured with DGA: ``grad_dot`` by one linearisation
                 against a target gradient.

A/B on the plain step, whatever the config says: ``plain:{xla,auto}+{full,chunk}``, the
attention kernel (``xla`` materialises the [B, N, T, T] scores; ``auto`` is cuDNN flash
attention on a GPU) times the loss (``full``: the fp32 [B, T, V] logits, ``loss_chunk=0``;
``chunk``: ``loss_chunk=--ab-loss-chunk``, 256 by default). ``plain:xla+full`` is the
step as it was before the kernels were selectable.

Each row names the attention implementation the step actually ran
(``transformer.resolve_attention``: ``auto`` is cuDNN flash attention on a GPU with bf16
compute) and the device. Before the timings, ``attention check`` compares cuDNN with xla
attention (forward output and q/k/v gradients, bf16, with and without segment ids) when
a GPU is present.

MFU = tokens/s x F / (peak bf16 FLOP/s x devices), with the model FLOPs per token of the
PaLM appendix B convention, ``F = 6 N + 12 L T d`` (N = parameters used in matmuls,
counting the tied unembedding once, not the embedding lookup nor the norm scales; L
layers, T tokens of context, d width). The attention term ``12 L T d`` counts the full
T x T score and value matmuls (forward + backward), although a causal kernel does about
half of that work; methods pay their extra work (reference forward, per-domain
gradients) in lower MFU, which is the point of the comparison. Peak FLOP/s comes from
the device kind (H100/H200 989 TF/s dense bf16, A100 312, TPU v4 275, v5e 197, v5p 459)
or ``--peak-tflops``; on CPU MFU is not printed unless given.

Commands::

    python benchmarks/bench_gpu_mfu.py --batch-size 64 --grad-accum 1 --steps 10  # 1 GPU
    python benchmarks/bench_gpu_mfu.py --tiny --steps 2       # CPU check of every row
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import config as config_lib
from mixjax import mixing
from mixjax.mixing import grads
from mixjax.parallel import sharding, step_sharding
from mixjax.models import transformer
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.mixing import statistics as stat_registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "tpu v4": 275.0,
               "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v5": 459.0}

# (variant, mixer, hyperparameters, gradient-engine config or None, model overrides)
VARIANTS = [
    ("plain", "uniform", {}, None, {}),
    # the attention x loss grid on the plain step ("CHUNK": --ab-loss-chunk)
    ("plain:xla+full", "uniform", {}, None, {"attention": "xla", "loss_chunk": 0}),
    ("plain:auto+full", "uniform", {}, None, {"attention": "auto", "loss_chunk": 0}),
    ("plain:xla+chunk", "uniform", {}, None, {"attention": "xla", "loss_chunk": "CHUNK"}),
    ("plain:auto+chunk", "uniform", {}, None, {"attention": "auto", "loss_chunk": "CHUNK"}),
    ("doremi", "doremi", {}, None, {}),
    ("doge-vmap", "doge", {"target": "universal"}, grads.GradConfig(strategy="vmap"), {}),
    ("doge-jvp", "doge", {"target": "universal"}, grads.GradConfig(strategy="jvp"), {}),
    ("dga-jvp", "dga", {}, grads.GradConfig(strategy="jvp"), {}),
]
DEFAULT_VARIANTS = ("plain,plain:xla+full,plain:auto+full,plain:xla+chunk,plain:auto+chunk,"
                    "doremi,doge-vmap,dga-jvp")


def peak_flops(device, override_tflops):
    if override_tflops:
        return override_tflops * 1e12
    kind = device.device_kind.lower()
    for key, tf in PEAK_TFLOPS.items():
        if key in kind:
            return tf * 1e12
    return None


def flops_per_token(mcfg: transformer.TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_matmul + 12 L T d (PaLM, arXiv 2204.02311, App. B;
    the attention term counts the full, not the causal half, T x T matmuls)."""
    n = mcfg.num_params()
    # The embedding lookup is not a matmul; with tied embeddings the table is used once
    # as the unembedding matmul, so it stays counted once either way.
    if not mcfg.tie_embeddings:
        n -= mcfg.vocab_size * mcfg.d_model
    n -= (2 * mcfg.num_layers + 1) * mcfg.d_model       # norm scales
    return 6.0 * n + 12.0 * mcfg.num_layers * seq_len * mcfg.d_model


def _max_abs(a) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32))))


def attention_check(seq_len: int = 256) -> str:
    """Max |cuDNN - xla| of causal attention output and of the q/k/v gradients, bf16,
    without and with segment ids (two packed documents per row); on GPUs only."""
    if jax.default_backend() not in ("gpu", "cuda"):
        return "attention check: skipped (no GPU)"
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (4, seq_len, 12, 64), jnp.float32).astype(jnp.bfloat16)
               for key in keys[:3])
    ct = jax.random.normal(keys[3], q.shape, jnp.float32).astype(jnp.bfloat16)
    seg = jnp.broadcast_to((jnp.arange(seq_len) >= seq_len // 3).astype(jnp.int32),
                           (4, seq_len))
    out = []
    for name, s in (("causal", None), ("causal+segments", seg)):
        def f(impl, q, k, v, s=s):
            o = transformer.attention(q, k, v, implementation=impl, segment_ids=s)
            return jnp.sum((o * ct).astype(jnp.float32)), o
        try:
            res = {impl: jax.jit(jax.value_and_grad(functools.partial(f, impl), argnums=(0, 1, 2),
                                                    has_aux=True))(q, k, v)
                   for impl in ("xla", "cudnn")}
        except Exception as e:   # noqa: BLE001 -- report and go on to the timings
            out.append(f"{name}: cudnn failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        (_, o_x), g_x = res["xla"]
        (_, o_c), g_c = res["cudnn"]
        def dif(a, b):
            return _max_abs(a.astype(jnp.float32) - b.astype(jnp.float32))
        out.append(f"{name}: max|out diff| {dif(o_x, o_c):.2e}, max|grad diff| "
                   f"{max(dif(a, b) for a, b in zip(g_x, g_c)):.2e} "
                   f"(max|grad| {max(_max_abs(a) for a in g_x):.2e})")
    return "attention check (bf16, cudnn vs xla): " + "; ".join(out)


def build_variant(cfg, mcfg, mixer_name, hparams, gcfg, k):
    mixer = mixing.get(mixer_name, **hparams)
    needs = stat_registry.needing("gradient_engine", mixer.requires)
    if needs:
        grads.check_request(gcfg, needs, who=f"mixer {mixer_name!r}")   # ValueError if not
    apply, params, axes = transformer.init(mcfg, cfg.train.seed)
    need_ref = bool(stat_registry.needing("reference", mixer.requires))
    ref = transformer.init(mcfg, cfg.train.seed + 1)[1] if need_ref else None
    tx, schedule = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
    fn = step_lib.make_train_step(
        apply=apply, mixer=mixer, tx=tx, num_domains=k, pad_id=mcfg.vocab_size - 1,
        lr_schedule=schedule, grad_accum=cfg.train.grad_accum,
        ref_apply=apply if need_ref else None,
        grad_stats=grads.make_grad_stats(gcfg, k) if needs else None, jit=False)
    state = state_lib.init_state(params, tx, mixer, k, cfg.train.seed)
    frozen = None if ref is None else state_lib.FrozenInputs(ref_params=ref)
    return fn, state, axes, frozen


def time_variant(fn, state, axes, frozen, mesh, host, steps):
    """``(median s/step, first-step s, final loss)`` of ``steps`` timed steps after one
    compiling step, each blocked on its metrics."""
    shardings = sharding.train_state_shardings(state, axes, mesh)
    state = sharding.place(state, shardings)
    frozen, frozen_sh = sharding.place_frozen(frozen, state.params, axes, mesh)
    step = step_sharding.jit_sharded_step(fn, shardings, frozen_shardings=frozen_sh)
    extra = () if frozen is None else (frozen,)
    batch = step_sharding.shard_batch(host, mesh)
    t0 = time.perf_counter()
    state, m = step(state, batch, *extra)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch, *extra)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first, float(m["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "lm_124m_gpu.py"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: config)")
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--domains", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50257, padded to 64")
    ap.add_argument("--peak-tflops", type=float, default=None, help="per device")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"comma-separated, of {[v[0] for v in VARIANTS]}")
    ap.add_argument("--loss-chunk", type=int, default=None,
                    help="model.loss_chunk of the rows that keep the config's (default: config)")
    ap.add_argument("--ab-loss-chunk", type=int, default=256,
                    help="model.loss_chunk of the plain:*+chunk rows")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized model and batch (a check)")
    args = ap.parse_args()

    cfg = config_lib.load(args.config)
    if args.tiny:
        cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 64, 2, 4
        cfg.data.seq_len, cfg.data.batch_size, cfg.train.grad_accum = 64, 16, 1
        cfg.model.dtype = "float32"                     # CPUs have no fast bf16 matmuls
        cfg.model.loss_chunk = min(cfg.model.loss_chunk, 16)   # several chunks of 64 positions
        args.ab_loss_chunk = 16
        args.vocab = 264
    if args.loss_chunk is not None:
        cfg.model.loss_chunk = args.loss_chunk
    if args.batch_size:
        cfg.data.batch_size = args.batch_size
    if args.grad_accum:
        cfg.train.grad_accum = args.grad_accum
    config_lib.validate(cfg)
    k, b, s = args.domains, cfg.data.batch_size, cfg.data.seq_len
    mcfg = transformer.TransformerConfig(vocab_size=args.vocab, **{
        f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)
        if f.name not in ("vocab_size", "init_from")})
    mesh = sharding.mesh_from_config(cfg.mesh)
    dev = jax.devices()[0]
    peak = peak_flops(dev, args.peak_tflops)
    fpt = flops_per_token(mcfg, s)
    print(f"{cfg.name}: {mcfg.num_params() / 1e6:.1f}M params, {mcfg.dtype} compute, "
          f"{mcfg.param_dtype} params, attention {mcfg.attention}, loss_chunk "
          f"{mcfg.loss_chunk}; batch {b} x {s} (grad_accum {cfg.train.grad_accum}), K={k}; "
          f"{jax.device_count()} x {dev.device_kind}; jax {jax.__version__}; mesh "
          f"{dict(mesh.shape)}; {fpt / 1e6:.1f} MFLOP/token (6N + 12LTd)")
    print(attention_check(), flush=True)

    rng = np.random.default_rng(0)
    ids = rng.permutation(np.repeat(np.arange(k), b // k)).astype(np.int32)   # B/K per domain
    host = {"tokens": rng.integers(0, args.vocab - 1, (b, s + 1), dtype=np.int32),
            "domain_id": ids, "sampling_weights": np.full(k, 1.0 / k, np.float32),
            "target_tokens": rng.integers(0, args.vocab - 1, (max(b // k, 1), s + 1),
                                          dtype=np.int32)}
    wanted = args.variants.split(",")
    rows = []
    unknown = set(wanted) - {v[0] for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}")
    for name, mixer_name, hp, gcfg, overrides in VARIANTS:
        if name not in wanted:
            continue
        vcfg = dataclasses.replace(mcfg, **{
            key: args.ab_loss_chunk if v == "CHUNK" else v for key, v in overrides.items()})
        attn = transformer.resolve_attention(vcfg.attention, transformer.DTYPES[vcfg.dtype])
        kernels = f"attn {attn}, loss_chunk {vcfg.loss_chunk}"
        try:
            fn, state, axes, frozen = build_variant(cfg, vcfg, mixer_name, hp,
                                                    gcfg or grads.GradConfig(), k)
        except ValueError as e:
            rows.append((name, None, None, None, f"not runnable: {e}"))
            continue
        try:
            med, first, loss = time_variant(fn, state, axes, frozen, mesh, host, args.steps)
        except Exception as e:   # noqa: BLE001 -- e.g. out of memory: keep the other rows
            rows.append((name, None, None, None, f"{kernels}; failed: {type(e).__name__}: "
                                                f"{str(e).splitlines()[0][:300]}"))
            print(f"  {name}: failed ({type(e).__name__})", flush=True)
            continue
        tok_s = b * s / med
        mfu = tok_s * fpt / (peak * jax.device_count()) if peak else None
        rows.append((name, med, tok_s, mfu, f"{kernels}; first step {first:.1f} s, "
                                            f"loss {loss:.3f}"))
        print(f"  {name}: {med:.3f} s/step, {tok_s:.0f} tokens/s on {dev.device_kind}",
              flush=True)   # as it comes, in case a later variant runs past the time limit
    base = next((r[1] for r in rows if r[0] == "plain" and r[1]), None)
    print(f"{'variant':<16} {'s/step':>8} {'vs plain':>8} {'tokens/s':>10} {'MFU':>6}  "
          f"{'device':<12} note")
    for name, med, tok_s, mfu, note in rows:
        if med is None:
            print(f"{name:<16} {'-':>8} {'-':>8} {'-':>10} {'-':>6}  {dev.device_kind:<12} "
                  f"{note}")
            continue
        ratio = f"{med / base:.2f}" if base else "-"
        mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        print(f"{name:<16} {med:>8.3f} {ratio:>8} {tok_s:>10.0f} {mfu_s:>6}  "
              f"{dev.device_kind:<12} {note}")


if __name__ == "__main__":
    main()
