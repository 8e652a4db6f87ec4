"""Vmapped DG sweep vs the same jobs one by one, measured side by side in one process.

A DomainBed sweep trains many small models of one shape (trials x test envs x
hyperparameters). mixjax trains such a group with one compiled, vmapped step
(``mixjax.dg.sweep``, ``vmap=True``); the baseline runs the identical jobs
sequentially with the unbatched compiled step (``vmap=False``; it compiles
once and reuses the executable for every job). Both include compilation and
evaluation, i.e. what a user waits for. The jobs get identical numbers either
way (tests/test_dg_sweep.py checks it).

    .venv/bin/python benchmarks/bench_dg.py            # a few minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_dg.py --quick    # fewer steps

Prints one line per setting with both wall times and the ratio
(sequential / vmapped; > 1 means the vmapped sweep is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np


def settings(quick: bool):
    from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig

    steps = 40 if quick else 150
    base = dict(
        dataset=DatasetConfig(name="colored_mnist"),
        algorithms=("erm",),
        n_hparams=3,
        n_trials=3,
        test_envs="single",
        steps=steps,
        checkpoint_freq=steps,  # records at step 0 and the last step (evaluation is 5,000 images)
        hparam_overrides={"batch_size": 32},  # one shape: all jobs of an algorithm form one vmapped group
    )
    mlp = ModelConfig(featurizer="mlp", mlp_width=64)
    yield "cmnist MLP(64x3) erm, 27 jobs", SweepConfig(model=mlp, **base)
    yield "cmnist MLP(64x3) irm, 27 jobs", SweepConfig(model=mlp, **{**base, "algorithms": ("irm",)})
    cnn = ModelConfig(featurizer="cnn", cnn_widths=(8, 16, 16, 16))
    yield "cmnist CNN(8,16,16,16) erm, 9 jobs", SweepConfig(
        model=cnn, **{**base, "n_hparams": 1, "hparam_overrides": {"batch_size": 16}})


def timed_sweep(cfg):
    from mixjax.dg import datasets as D
    from mixjax.dg import sweep as S

    data = D.get(cfg.dataset.name, cfg.dataset.seed)
    dev = S.DeviceData(data)
    jobs = S.make_jobs(cfg, data.num_envs)
    groups = S.make_groups(jobs, cfg.max_group, cfg.vmap)
    cache: dict = {}
    t0 = time.perf_counter()
    recs = []
    for g in groups:
        recs += S.run_group(cfg, data, dev, g, cfg.vmap, cache)
    return time.perf_counter() - t0, len(jobs), len(groups), recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU(s) visible")
    for name, cfg in settings(args.quick):
        seq_t, n_jobs, seq_groups, seq_recs = timed_sweep(dataclasses.replace(cfg, vmap=False))
        vm_t, _, vm_groups, vm_recs = timed_sweep(dataclasses.replace(cfg, vmap=True))
        last = lambda rs: np.mean([r["env0_in_acc"] for r in rs if r["step"] == cfg.steps - 1])  # noqa: E731
        print(f"{name}, {cfg.steps} steps: sequential {seq_t:.1f}s ({seq_groups} runs) | "
              f"vmapped {vm_t:.1f}s ({vm_groups} group) | speed-up x{seq_t / vm_t:.2f} | "
              f"mean final env0 acc {last(seq_recs):.4f} vs {last(vm_recs):.4f}", flush=True)


if __name__ == "__main__":
    main()
