"""Sharded train step on 1 vs 8 fake CPU devices: a check that nothing degenerates.

Runs the real train step (``mixjax.core.step`` placed and jitted by
``mixjax.parallel.sharding``, exactly as ``mixjax train`` does) for the tiny default
transformer on several meshes, side by side in one process, and prints the median
step time, its ratio to the 1-device mesh and the number of compilations. Fake CPU
devices share the same cores, so 8 devices are NOT expected to be faster; the check
is that the ratio stays moderate (collectives on fake devices cost something) and that
every mesh compiles its step exactly once.

Command (CPU, about 2 minutes on 2 cores)::

    python benchmarks/bench_sharding.py
    python benchmarks/bench_sharding.py --mixer doge --steps 20
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mixjax import mixing  # noqa: E402
from mixjax.mixing import grads
from mixjax.parallel import sharding, step_sharding
from mixjax.config import Config  # noqa: E402
from mixjax.models import transformer  # noqa: E402
from mixjax.core import state as state_lib  # noqa: E402
from mixjax.core import step as step_lib  # noqa: E402
from mixjax.mixing import statistics as stat_registry

MESHES = {"1 device": (1, 1, 1), "data=8": (8, 1, 1), "data=2 x fsdp=4": (2, 4, 1),
          "data=2 x tensor=4": (2, 1, 4)}


def build(cfg: Config, mixer_name: str, num_domains: int, vocab: int):
    mcfg = transformer.TransformerConfig(vocab_size=vocab, **{
        k: getattr(cfg.model, k) for k in ("d_model", "num_layers", "num_heads", "d_ff", "mlp",
                                          "tie_embeddings", "dtype", "param_dtype")})
    apply, params, axes = transformer.init(mcfg, 0)
    mixer = mixing.get(mixer_name)
    tx, schedule = state_lib.make_optimizer(cfg.optim, 1000)
    need_grads = stat_registry.needing("gradient_engine", mixer.requires)
    need_ref = stat_registry.needing("reference", mixer.requires)
    fn = step_lib.make_train_step(
        apply=apply, mixer=mixer, tx=tx, num_domains=num_domains, pad_id=vocab - 1,
        lr_schedule=schedule, ref_apply=apply if need_ref else None,
        grad_stats=grads.make_grad_stats(grads.GradConfig(), num_domains) if need_grads else None,
        jit=False)
    state = state_lib.init_state(params, tx, mixer, num_domains, 0)
    frozen = state_lib.FrozenInputs(ref_params=params) if need_ref else None
    return fn, state, axes, frozen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixer", default="groupdro")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--domains", type=int, default=4)
    args = ap.parse_args()
    cfg = Config()                         # the tiny default model (d_model 64, 2 layers)
    vocab, k = 264, args.domains
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices; "
          f"mixer {args.mixer}, batch {args.batch} x {args.seq}, {args.steps} timed steps")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps + 1):
        ids = rng.permutation(np.repeat(np.arange(k), args.batch // k)).astype(np.int32)
        batches.append({"tokens": rng.integers(0, vocab - 1, (args.batch, args.seq + 1),
                                               dtype=np.int32),
                        "domain_id": ids, "sampling_weights": np.full(k, 1 / k, np.float32),
                        "target_tokens": rng.integers(0, vocab - 1, (4, args.seq + 1),
                                                      dtype=np.int32)})
    rows = []
    base = None
    for label, shape in MESHES.items():
        fn, state, axes, frozen = build(cfg, args.mixer, k, vocab)
        mesh = sharding.make_mesh(*shape)
        shardings = sharding.train_state_shardings(state, axes, mesh)
        state = sharding.place(state, shardings)
        frozen, frozen_sh = sharding.place_frozen(frozen, state.params, axes, mesh)
        step = step_sharding.jit_sharded_step(fn, shardings, frozen_shardings=frozen_sh)
        extra = () if frozen is None else (frozen,)
        t0 = time.perf_counter()
        state, m = step(state, step_sharding.shard_batch(batches[0], mesh), *extra)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for b in batches[1:]:
            t0 = time.perf_counter()
            state, m = step(state, step_sharding.shard_batch(b, mesh), *extra)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base = base or med
        rows.append((label, compile_s, med * 1e3, med / base, step._cache_size(),
                     float(m["loss"])))
    print(f"{'mesh':<20} {'1st step s':>10} {'ms/step':>9} {'vs 1 dev':>9} {'compiles':>9} "
          f"{'loss':>8}")
    for label, c, ms, ratio, n, loss in rows:
        print(f"{label:<20} {c:>10.1f} {ms:>9.1f} {ratio:>9.2f} {n:>9d} {loss:>8.4f}")


if __name__ == "__main__":
    main()
