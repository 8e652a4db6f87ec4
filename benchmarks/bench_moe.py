"""Mixture-of-experts speed and memory: MoE vs a dense model of equal active parameters, and
the compiled memory per device under expert parallelism.

1. Throughput: the real train step (``mixjax.core.step``, uniform mixer, AdamW) of
   ``model.kind=moe`` with E experts, top-k routing, per-expert hidden size f, against the
   dense transformer whose MLP hidden size is k*f (the same active FFN parameters and
   FLOPs per token, the router aside), same depth/width/batch, on one device. Prints
   median step time and tokens/s of each.
2. Memory: the same MoE step compiled (not run) on fake CPU devices with
   ``mesh.expert = E`` (and on 1 device); XLA's memory analysis gives the argument bytes
   per device (the train state: params + Adam moments) and the parameter bytes each
   device holds of the expert weights (their shards: 1/E of them).
On a GPU (``--device gpu``), the same script reports model FLOPs utilisation (MFU) from the
step time and the active-parameter FLOPs ``6 * N_active * tokens`` against ``--peak-tflops``.

Command (CPU; about 2 minutes on 2 shared cores)::

    python benchmarks/bench_moe.py
    python benchmarks/bench_moe.py --experts 8 --top-k 2 --steps 20
"""

from __future__ import annotations

import os
import sys

if "--device" not in sys.argv or "cpu" in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mixjax import mixing  # noqa: E402
from mixjax.core import state as state_lib  # noqa: E402
from mixjax.core import step as step_lib  # noqa: E402
from mixjax.models import moe, transformer  # noqa: E402
from mixjax.parallel import sharding, step_sharding  # noqa: E402

K = 4   # domains


def _step(apply, params, axes, mesh=None):
    mixer = mixing.get("uniform")
    tx = optax.adamw(1e-3)
    fn = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=K, pad_id=0,
                                  jit=False)
    if mesh is None:
        return jax.jit(fn, donate_argnums=(0,)), state_lib.init_state(params, tx, mixer, K, 0)
    state, shardings = sharding.init_state_sharded(
        lambda p: state_lib.init_state(p, tx, mixer, K, 0), params, axes, mesh)
    return step_sharding.jit_sharded_step(fn, shardings), state


def _batch(args, seed=0, mesh=None):
    rng = np.random.default_rng(seed)
    b = {"tokens": rng.integers(1, args.vocab, (args.batch, args.seq + 1)).astype(np.int32),
         "domain_id": (np.arange(args.batch) % K).astype(np.int32),
         "sampling_weights": np.full(K, 1 / K, np.float32)}
    return step_sharding.shard_batch(b, mesh) if mesh is not None else jax.device_put(b)


def throughput(args):
    common = dict(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                  num_heads=args.heads)
    mcfg = moe.MoEConfig(**common, num_experts=args.experts, top_k=args.top_k,
                         capacity_factor=args.capacity_factor, expert_d_ff=args.expert_ff)
    dcfg = transformer.TransformerConfig(**common, d_ff=args.top_k * args.expert_ff)
    rows = []
    for label, (apply, params, axes) in (("dense", transformer.init(dcfg, 0)),
                                         ("moe", moe.init(mcfg, 0))):
        step, state = _step(apply, params, axes)
        batch = _batch(args)
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m["loss"])
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        n_total = sum(x.size for x in jax.tree.leaves(params))
        ffn = args.layers * 3 * args.d_model * args.top_k * args.expert_ff
        n_active = n_total if label == "dense" else (
            n_total - args.layers * 3 * args.d_model * args.expert_ff * args.experts + ffn)
        rows.append((label, n_total, n_active, compile_s, med, args.batch * args.seq / med))
    print(f"\n1. train step, 1 device, batch {args.batch} x {args.seq} tokens, {args.steps} steps")
    print(f"{'model':6} {'params':>9} {'active':>9} {'compile s':>10} {'step ms':>8} "
          f"{'tokens/s':>9}")
    for label, n, na, c, med, tps in rows:
        print(f"{label:6} {n:9d} {na:9d} {c:10.2f} {med * 1e3:8.1f} {tps:9.0f}")
    if args.device == "gpu":
        for label, n, na, c, med, tps in rows:
            mfu = 6 * na * tps / (args.peak_tflops * 1e12)
            print(f"MFU {label}: {mfu:.3%} of {args.peak_tflops} TFLOP/s")
    print(f"moe / dense tokens/s: {rows[1][5] / rows[0][5]:.2f}")


def memory(args):
    mcfg = moe.MoEConfig(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                         num_heads=args.heads, num_experts=args.experts, top_k=args.top_k,
                         capacity_factor=args.capacity_factor, expert_d_ff=args.expert_ff)
    apply, params, axes = moe.init(mcfg, 0)
    print("\n2. compiled train step, memory per device (XLA memory analysis)")
    print(f"{'mesh':22} {'state MB/dev':>12} {'temp MB/dev':>11} {'expert w KB/dev':>15}")
    n = len(jax.devices())
    for label, sizes in (("1 device", {}), (f"expert={args.experts}",
                                            {"expert": args.experts}),
                         (f"expert={args.experts // 2} x data=2",
                          {"expert": args.experts // 2, "data": 2})):
        need = int(np.prod(list(sizes.values()) or [1]))
        if need > n:
            print(f"{label:22} (needs {need} devices, {n} here)")
            continue
        mesh = sharding.make_mesh(devices=jax.devices()[:need], **{
            "data": sizes.get("data", 1), "expert": sizes.get("expert", 1)})
        step, state = _step(apply, params, axes, mesh)
        compiled = step.lower(state, _batch(args, mesh=mesh)).compile()
        mem = compiled.memory_analysis()
        w = state.params["blocks"][0]["moe"]["w_up"]
        shard_kb = w.addressable_shards[0].data.nbytes / 1024
        print(f"{label:22} {mem.argument_size_in_bytes / 2**20:12.3f} "
              f"{mem.temp_size_in_bytes / 2**20:11.3f} {shard_kb:15.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--expert-ff", type=int, default=88)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=264)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    print(f"devices: {jax.devices()[0].platform} x {len(jax.devices())}")
    throughput(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
