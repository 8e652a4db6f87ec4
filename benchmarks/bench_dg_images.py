"""Images/s of the image-folder training pipeline (grain, DomainBed's augmentation) with 0 and 2
worker processes, next to the images/s the ResNet-18 ERM training step consumes, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dg_images.py            # 224 px, DomainBed's size
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dg_images.py --size 64 --steps 4 --train-steps 2

The folder is a generated PACS-shaped miniature (4 domains x 3 classes x ``--per-class`` random
227x227 JPEGs, PACS's own image size). Each pipeline step is one DomainBed minibatch: 3 training
envs x ``--batch`` images, each read from disk, RandomResizedCrop + flip + ColorJitter +
RandomGrayscale, as uint8 (``mixjax.dg.image_pipeline``). The step is the sweep's compiled ERM
update on ResNet-18 (frozen BN; normalisation of the uint8 batch included) at the same size and
batch. Prints one line per setting and the ratio pipeline / step: > 1 means the pipeline makes
images faster than the step consumes them (it is then not the bottleneck).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def make_folder(root: str, per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in ("art_painting", "cartoon", "photo", "sketch"):
        for c in ("dog", "elephant", "giraffe"):
            os.makedirs(f"{root}/PACS/{d}/{c}")
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (227, 227, 3), dtype=np.uint8)).save(f"{root}/PACS/{d}/{c}/{i}.jpg")


def pipeline_rate(root: str, size: int, batch: int, steps: int, workers: int) -> float:
    """Images/s over ``steps`` steps after the first (worker start-up excluded); each process reads
    with one thread and prefetches at most 2 steps (the sweep's settings)."""
    from mixjax.dg import image_folder as F
    from mixjax.dg import image_pipeline as P

    _, _, _, files = F.scan("PACS", root)
    paths = tuple(tuple(p for p, _ in items) for items in files[:3])
    labels = tuple(np.asarray([y for _, y in items], np.int32) for items in files[:3])
    spec = P.StepBatches(paths, labels, batch, size, seed=0, augment=True)
    it = iter(P.train_batches(spec, steps + 1, workers=workers))
    next(it)
    t0 = time.perf_counter()
    n = sum(item["x"].shape[0] * item["x"].shape[1] for item in it)
    return n / (time.perf_counter() - t0)


def step_rate(size: int, batch: int, steps: int) -> float:
    """Images/s of the sweep's compiled ResNet-18 ERM step (compile excluded)."""
    import jax
    import jax.numpy as jnp

    from mixjax.dg import algorithms as A
    from mixjax.dg import hparams as H
    from mixjax.dg.networks import NetSpec
    from mixjax.dg.sweep import GroupRunner

    net = NetSpec(input_shape=(size, size, 3), num_classes=7, featurizer="resnet18")
    hp = H.draw({**A.get("erm").hparam_space(False), **H.network_space("resnet18")}, 0, 0)
    hp["batch_size"] = batch
    static, traced = H.split_static(hp)
    alg = A.get("erm")(net=net, num_envs=3, static=static)
    runner = GroupRunner(alg, batch, 1024, batched=False)
    hp = {k: jnp.float32(v) for k, v in traced.items()}
    state = jax.jit(alg.init)(jax.random.key(0), hp)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, batch, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 7, (3, batch)).astype(np.int32)
    key = jax.random.key(1)
    state, key, m = runner.train_fed([(x, y)], hp, state, key)  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    state, key, m = runner.train_fed([(x, y)] * steps, hp, state, key)
    jax.block_until_ready(m)
    return steps * 3 * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8, help="images per env per step (DomainBed: 32)")
    ap.add_argument("--steps", type=int, default=8, help="pipeline steps timed")
    ap.add_argument("--train-steps", type=int, default=3, help="training steps timed")
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()
    import jax

    print(f"backend {jax.default_backend()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.size} px, 3 envs x {args.batch} images per step")
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(tmp, args.per_class)
        rates = {w: pipeline_rate(tmp, args.size, args.batch, args.steps, w) for w in (0, 2)}
    consumed = step_rate(args.size, args.batch, args.train_steps)
    print(f"ResNet-18 ERM step consumes      {consumed:8.1f} img/s")
    for w, r in rates.items():
        print(f"pipeline, {w} worker processes   {r:8.1f} img/s   pipeline / step = {r / consumed:6.2f}")
    print(f"2 workers / 0 workers = {rates[2] / rates[0]:.2f}")


if __name__ == "__main__":
    main()
