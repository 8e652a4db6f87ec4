"""Vmapped DG sweep vs the same jobs one by one, measured side by side in one process.

A DomainBed sweep trains many small models of one shape (trials x test envs x
hyperparameters). mixjax trains such a group with one compiled, vmapped step
(``mixjax.dg.sweep``, ``vmap=True``); the baseline runs the identical jobs
sequentially with the unbatched step (``vmap=False``: minibatches sampled on
the device inside the jitted step, compiled once and reused for every job); a
third arm is the usual Python loop calling a jitted step on minibatches
gathered on the host (DomainBed's structure). Training time (init + steps,
no evaluation) is timed after compilation, the two arms interleaved and the
best of ``--repeats`` kept, because the 2 CPU cores are shared; compile time
is printed separately and in a second ratio. The script checks that both arms
produce the same final losses.

    .venv/bin/python benchmarks/bench_dg.py            # a few minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_dg.py --quick    # fewer steps
    .venv/bin/python benchmarks/bench_dg.py --folder   # image-folder decode vs ResNet step, images/s

Prints one line per setting with both times and the ratio
(sequential / vmapped; > 1 means the vmapped sweep is faster).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np


def settings(quick: bool):
    from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig

    steps = 40 if quick else 150
    base = dict(
        dataset=DatasetConfig(name="colored_mnist", kwargs={"downsample": 2}),
        algorithms=("erm",),
        n_hparams=1,
        n_trials=3,
        test_envs="single",
        steps=steps,
        checkpoint_freq=steps,  # records at step 0 and the last step (evaluation is 5,000 images)
        hparam_overrides={"batch_size": 32},  # one shape: all jobs of an algorithm form one vmapped group
    )
    mlp = ModelConfig(featurizer="mlp", mlp_width=64)
    yield "cmnist 14x14 MLP(64x3) erm", SweepConfig(model=mlp, **base)
    yield "cmnist 14x14 MLP(64x3) irm", SweepConfig(model=mlp, **{**base, "algorithms": ("irm",)})
    cnn = ModelConfig(featurizer="cnn", cnn_widths=(8, 16, 16, 16))
    yield "cmnist 14x14 CNN(8,16,16,16) erm", SweepConfig(model=cnn, **{**base, "hparam_overrides": {"batch_size": 16}})


def group_inputs(cfg):
    """The group's algorithm, per-job hparams / data arrays / keys, and the device data."""
    import jax.numpy as jnp

    from mixjax.dg import algorithms as A
    from mixjax.dg import datasets as D
    from mixjax.dg import hparams as H
    from mixjax.dg import sweep as S

    data = D.get(cfg.dataset.name, cfg.dataset.seed, **cfg.dataset.kwargs)
    dev = S.DeviceData(data)
    jobs = S.make_jobs(cfg, data.num_envs)
    (group,) = S.make_groups(jobs, len(jobs), True)
    name, static, _ = S.group_key(group[0])
    alg = A.get(name)(net=S.net_spec(cfg, data), num_envs=data.num_envs - 1, static=static)
    hps = [{k: jnp.float32(v) for k, v in H.split_static(dict(j.hparams))[1].items()} for j in group]
    jds = [{k: jnp.asarray(v) for k, v in dev.job_arrays(j, cfg.holdout_fraction).items()} for j in group]
    keys = [jax.random.key(j.seed) for j in group]
    return alg, dict(static)["batch_size"], hps, jds, keys, dev


def bench_setting(cfg, repeats: int):
    """(compile s, best steady-state s) for sequential and vmapped training of the same jobs."""
    import jax.numpy as jnp

    from mixjax.dg import sweep as S

    alg, b, hps, jds, keys, dev = group_inputs(cfg)
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    seq = S.GroupRunner(alg, b, cfg.eval_batch, batched=False)
    vm = S.GroupRunner(alg, b, cfg.eval_batch, batched=True)
    hp_v, jd_v, key_v = stack(hps), stack(jds), jnp.stack(keys)

    def run_seq(n):
        out = []
        for hp, jd, k in zip(hps, jds, keys):
            st = seq.init(k, hp)
            out.append(seq.train(n, hp, st, k, jd, dev.X, dev.Y)[2]["loss"])
        return jax.block_until_ready(out)

    def run_vm(n):
        st = vm.init(key_v, hp_v)
        return jax.block_until_ready(vm.train(n, hp_v, st, key_v, jd_v, dev.X, dev.Y)[2]["loss"])

    update = jax.jit(alg.update)
    Xn, Yn = np.asarray(dev.X), np.asarray(dev.Y)
    jds_np = [jax.tree.map(np.asarray, jd) for jd in jds]

    def run_naive(n):
        """DomainBed-style: a Python loop of jitted steps, minibatches gathered on the host."""
        out = []
        for hp, jd, k in zip(hps, jds_np, keys):
            st = seq.init(k, hp)
            rng = np.random.default_rng(0)
            te = jd["train_envs"][:, None]
            for _ in range(n):
                idx = jd["in_idx"][te, rng.integers(0, jd["in_len"][te], (len(te), b))]
                st, m = update(hp, st, Xn[te, idx], Yn[te, idx], k)
            out.append(m["loss"])
        return jax.block_until_ready(out)

    arms = (("naive", run_naive), ("seq", run_seq), ("vm", run_vm))
    t = {}
    for arm, fn in arms:
        t0 = time.perf_counter()
        fn(1)  # compiles
        t[arm + "_compile"] = time.perf_counter() - t0
    best = {arm: float("inf") for arm, _ in arms}
    losses = {}
    for _ in range(repeats):  # interleaved, best of N: robust to other processes on a shared machine
        for arm, fn in arms:
            t0 = time.perf_counter()
            losses[arm] = np.asarray(fn(cfg.steps))
            best[arm] = min(best[arm], time.perf_counter() - t0)
    # same jobs, same random streams: only float reassociation differs (amplified by large penalty weights)
    diff = float(np.max(np.abs(losses["seq"] - losses["vm"]) / (1.0 + np.abs(losses["seq"]))))
    return t, best, len(hps), diff


def bench_folder(repeats: int, size: int = 64, per_class: int = 25) -> None:
    """Images/s of the image-folder loader (JPEG decode + resize + normalise) with 1 and 2
    decoding threads, next to the images/s a ResNet training step consumes at the same size.

    The folder is a generated PACS-shaped miniature (4 domains x 3 classes x ``per_class``
    random 227x227 JPEGs, PACS's own size). Images are decoded once per sweep and then kept in
    memory, so the decode rate bounds only the sweep's start-up, not each step.
    """
    import tempfile

    import jax.numpy as jnp
    from PIL import Image

    from mixjax.dg import algorithms as A
    from mixjax.dg import hparams as H
    from mixjax.dg import image_folder as F
    from mixjax.dg.networks import NetSpec

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("art_painting", "cartoon", "photo", "sketch"):
            for c in ("dog", "elephant", "giraffe"):
                os.makedirs(f"{tmp}/PACS/{d}/{c}")
                for i in range(per_class):
                    Image.fromarray(rng.integers(0, 256, (227, 227, 3), dtype=np.uint8)).save(f"{tmp}/PACS/{d}/{c}/{i}.jpg")
        n = 4 * 3 * per_class
        rates = {}
        for workers in (1, 2):
            best = min(_timed(lambda: F.image_folder("PACS", root=tmp, image_size=size, workers=workers))
                       for _ in range(repeats))
            rates[workers] = n / best
    net = NetSpec(input_shape=(size, size, 3), num_classes=3, featurizer="resnet", resnet_widths=(32, 64, 128, 256))
    hp = H.draw(A.get("erm").hparam_space(False), 0, 0)
    hp["batch_size"] = 32
    static, traced = H.split_static(hp)
    alg = A.get("erm")(net=net, num_envs=3, static=static)
    hp = {k: jnp.float32(v) for k, v in traced.items()}
    state = alg.init(jax.random.key(0), hp)
    xs = jnp.asarray(rng.normal(size=(3, 32, size, size, 3)).astype(np.float32))
    ys = jnp.asarray(rng.integers(0, 3, (3, 32)).astype(np.int32))
    step = jax.jit(alg.update)
    state, _ = step(hp, state, xs, ys, jax.random.key(0))
    jax.block_until_ready(state)
    steps = 5

    def run():
        nonlocal state
        for i in range(steps):
            state, _ = step(hp, state, xs, ys, jax.random.key(i))
        jax.block_until_ready(state)

    step_rate = steps * 3 * 32 / min(_timed(run) for _ in range(repeats))
    print(f"image folder at {size}px ({n} JPEGs 227x227): decode {rates[1]:.0f} img/s with 1 thread, "
          f"{rates[2]:.0f} img/s with 2 (x{rates[2] / rates[1]:.2f}); "
          f"ResNet(32,64,128,256) ERM step, 3 envs x 32: {step_rate:.0f} img/s "
          f"(decode / step consumption: x{rates[2] / step_rate:.2f})", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folder", action="store_true", help="only the image-folder loader vs ResNet step benchmark")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s) visible", flush=True)
    if args.folder:
        bench_folder(args.repeats)
        return
    for name, cfg in settings(args.quick):
        t, best, n, diff = bench_setting(cfg, args.repeats)
        print(f"{name}, {n} jobs x {cfg.steps} steps (best of {args.repeats}, arms interleaved):\n"
              f"  python loop of jitted steps {best['naive']:.2f}s | one by one {best['seq']:.2f}s | "
              f"vmapped {best['vm']:.2f}s\n"
              f"  vmapped speed-up: x{best['naive'] / best['vm']:.2f} vs python loop, "
              f"x{best['seq'] / best['vm']:.2f} vs one by one (one by one vs python loop x{best['naive'] / best['seq']:.2f})\n"
              f"  compile: {t['naive_compile']:.1f}s / {t['seq_compile']:.1f}s / {t['vm_compile']:.1f}s "
              f"(incl. compile, vmapped vs one by one: x{(t['seq_compile'] + best['seq']) / (t['vm_compile'] + best['vm']):.2f}); "
              f"max rel. final-loss difference one by one vs vmapped {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
