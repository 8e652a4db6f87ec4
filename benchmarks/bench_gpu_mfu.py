"""Training throughput and MFU of the 124M config for plain training, DoReMi and DoGE.

Runs the real train step (``mixjax.core.step``, placed and jitted by
``mixjax.parallel.sharding`` over every local device, ``mesh.data=-1`` as in
``configs/lm_124m_gpu.py``) for N timed steps per variant, side by side in one
process, on synthetic token batches (throughput does not depend on the text):

* ``plain``      uniform mixture, one forward + backward;
* ``doremi``     + a frozen reference model's forward (excess loss per token);
* ``doge-vmap``  DoGE (universal target): K per-domain gradients by
                 ``vmap(grad)`` over the stratified batch, Gram matrix, combined gradient;
* ``doge-jvp``   DoGE needs ``gram``/``grad_norm``, which ``grads.strategy=jvp``
                 cannot supply (one direction only): reported as not runnable, with
* ``dga-jvp``    the jvp path measured instead: DGA's ``grad_dot`` by one linearisation
                 against a target gradient.

Model FLOPs per token follow the PaLM appendix B convention,
``6 N + 12 L T d`` (N = parameters used in matmuls, counting the tied
unembedding once; L layers, T tokens of context, d width). MFU = tokens/s x that /
(peak bf16 FLOP/s x devices); methods pay their extra work (reference forward,
per-domain gradients) in lower MFU, which is the point of the comparison. Peak FLOP/s
comes from the device kind (H100/H200 989 TF/s dense bf16, A100 312, TPU v4 275,
v5e 197, v5p 459) or ``--peak-tflops``; on CPU MFU is not printed unless given.

No GPU was available when this was written: the script is checked on CPU at tiny size
only (``--tiny``); GPU numbers are yet to be measured.

Commands::

    python benchmarks/bench_gpu_mfu.py --steps 20                 # 1 node, all GPUs, 124M
    python benchmarks/bench_gpu_mfu.py --tiny --steps 3           # CPU check (~3 minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import time

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax import mixing
from mixjax.mixing import grads
from mixjax.parallel import sharding
from mixjax.models import transformer
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.mixing import statistics as stat_registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "tpu v4": 275.0,
               "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v5": 459.0}

# (variant, mixer, hyperparameters, gradient-engine config or None)
VARIANTS = [
    ("plain", "uniform", {}, None),
    ("doremi", "doremi", {}, None),
    ("doge-vmap", "doge", {"target": "universal"}, grads.GradConfig(strategy="vmap")),
    ("doge-jvp", "doge", {"target": "universal"}, grads.GradConfig(strategy="jvp")),
    ("dga-jvp", "dga", {}, grads.GradConfig(strategy="jvp")),
]


def peak_flops(device, override_tflops):
    if override_tflops:
        return override_tflops * 1e12
    kind = device.device_kind.lower()
    for key, tf in PEAK_TFLOPS.items():
        if key in kind:
            return tf * 1e12
    return None


def flops_per_token(mcfg: transformer.TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_matmul + 12 L T d (PaLM, arXiv 2204.02311, App. B)."""
    n = mcfg.num_params()
    # The embedding lookup is not a matmul; with tied embeddings the table is used once
    # as the unembedding matmul, so it stays counted once either way.
    if not mcfg.tie_embeddings:
        n -= mcfg.vocab_size * mcfg.d_model
    n -= (2 * mcfg.num_layers + 1) * mcfg.d_model       # norm scales
    return 6.0 * n + 12.0 * mcfg.num_layers * seq_len * mcfg.d_model


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "lm_124m_gpu.py"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: config)")
    ap.add_argument("--grad-accum", type=int, default=None)
    ap.add_argument("--domains", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50257, padded to 64")
    ap.add_argument("--peak-tflops", type=float, default=None, help="per device")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--tiny", action="store_true", help="CPU-sized model and batch (a check)")
    args = ap.parse_args()

    cfg = config_lib.load(args.config)
    if args.tiny:
        cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 64, 2, 4
        cfg.data.seq_len, cfg.data.batch_size, cfg.train.grad_accum = 64, 16, 1
        cfg.model.dtype = "float32"                     # CPUs have no fast bf16 matmuls
        args.vocab = 264
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
    print(f"{cfg.name}: {mcfg.num_params() / 1e6:.1f}M params, {mcfg.dtype} compute; batch "
          f"{b} x {s} (grad_accum {cfg.train.grad_accum}), K={k}; {jax.device_count()} x "
          f"{dev.device_kind}; mesh {dict(mesh.shape)}; {fpt / 1e6:.1f} MFLOP/token")

    rng = np.random.default_rng(0)
    ids = rng.permutation(np.repeat(np.arange(k), b // k)).astype(np.int32)   # B/K per domain
    host = {"tokens": rng.integers(0, args.vocab - 1, (b, s + 1), dtype=np.int32),
            "domain_id": ids, "sampling_weights": np.full(k, 1.0 / k, np.float32),
            "target_tokens": rng.integers(0, args.vocab - 1, (max(b // k, 1), s + 1),
                                          dtype=np.int32)}
    wanted = args.variants.split(",")
    rows = []
    for name, mixer_name, hp, gcfg in VARIANTS:
        if name not in wanted:
            continue
        try:
            fn, state, axes, frozen = build_variant(cfg, mcfg, mixer_name, hp,
                                                    gcfg or grads.GradConfig(), k)
        except ValueError as e:
            rows.append((name, None, None, None, f"not runnable: {e}"))
            continue
        shardings = sharding.train_state_shardings(state, axes, mesh)
        state = sharding.place(state, shardings)
        frozen, frozen_sh = sharding.place_frozen(frozen, state.params, axes, mesh)
        step = sharding.jit_sharded_step(fn, shardings, frozen_shardings=frozen_sh)
        extra = () if frozen is None else (frozen,)
        batch = sharding.shard_batch(host, mesh)
        t0 = time.perf_counter()
        state, m = step(state, batch, *extra)
        jax.block_until_ready(m)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, m = step(state, batch, *extra)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        tok_s = b * s / med
        mfu = tok_s * fpt / (peak * jax.device_count()) if peak else None
        rows.append((name, med, tok_s, mfu, f"first step {first:.1f} s, loss "
                                            f"{float(m['loss']):.3f}"))
        del state, step
    base = next((r[1] for r in rows if r[0] == "plain" and r[1]), None)
    print(f"{'variant':<10} {'s/step':>8} {'vs plain':>8} {'tokens/s':>10} {'MFU':>6}  note")
    for name, med, tok_s, mfu, note in rows:
        if med is None:
            print(f"{name:<10} {'-':>8} {'-':>8} {'-':>10} {'-':>6}  {note}")
            continue
        ratio = f"{med / base:.2f}" if base else "-"
        mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        print(f"{name:<10} {med:>8.3f} {ratio:>8} {tok_s:>10.0f} {mfu_s:>6}  {note}")


if __name__ == "__main__":
    main()
