"""Loop overhead: the full ``mixjax train`` loop vs the bare jitted step on the same batches.

For each model (``tiny`` = the quickstart LM of ``configs/lm_tiny_uniform.py``,
~0.5M params, B=16 x S=128; ``10m`` = 6 layers x d_model 384, B=8 x S=256, as in
``benchmarks/bench_train.py``), each mixer (``uniform``: static;
``odm``: online, its weights feed the sampler) and each ``data.lag`` (1, 2):

* ``loop``: ``mixjax.train.loop.train`` on mixpile-tiny for ``--steps`` steps
  (no periodic eval or checkpoint); the time per step is read from the loop's
  ``on_step`` callback between step ``--warmup`` and the last step, so the
  Trainer build, compilation and the final evaluation/checkpoint are excluded.
  It includes everything the loop does per step: sampling and assembling the
  batch on the host, placing it, the step, fetching and writing metrics, the
  lag-``L`` wait on step t-L's weights.
* ``bare``: the same Trainer's jitted step over batches drawn up front from the
  same sampler (seeded alike: the very batches of a static mixer's loop) and
  already on the device, dispatched back to back, one block at the end.

``overhead = loop / bare - 1`` per step, in wall-clock time and in this
process's CPU time (``time.process_time``, all threads: on a machine shared
with other jobs it is far less noisy than wall time, but it does not see time
spent waiting). Each pair runs ``--reps`` times,
loop and bare alternating (shared machines drift), and the median is printed.
Compilations are shared through JAX's persistent cache in a temporary directory.

Command (CPU, about 5 minutes for the tiny model; numbers in docs/training.md)::

    python benchmarks/bench_loop.py                          # tiny model
    python benchmarks/bench_loop.py --models tiny,10m --steps 40
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax import parallel
from mixjax.train import loop
from mixjax.train.data import build_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": [],
    "10m": ["model.d_model=384", "model.num_layers=6", "model.num_heads=6",
            "data.batch_size=8", "data.seq_len=256"],
}
MIXERS = {"uniform": "configs/lm_tiny_uniform.py", "odm": "configs/lm_tiny_odm.py"}


def _now():
    return np.array([time.perf_counter(), time.process_time()])


def run_loop(cfg, data, warmup: int) -> np.ndarray:
    """(wall, process CPU) seconds per step."""
    stamps: list[np.ndarray] = []
    loop.train(cfg, data=data, on_step=lambda done: stamps.append(_now()))
    return (stamps[-1] - stamps[warmup]) / (len(stamps) - 1 - warmup)


def run_bare(cfg, data, warmup: int) -> np.ndarray:
    trainer = loop.Trainer(cfg, data)
    sampler = trainer.data.make_sampler(trainer.sampler_weights())
    batches = []
    for t in range(cfg.train.steps):
        p = np.asarray(sampler.weights_for(t), np.float32)
        hb = next(sampler)
        batch = {"tokens": np.asarray(hb["tokens"], np.int32),
                 "domain_id": np.asarray(hb["domain_id"], np.int32), "sampling_weights": p}
        if trainer.target_tokens is not None:
            batch["target_tokens"] = np.asarray(trainer.target_tokens)
        batches.append(parallel.shard_batch(batch, trainer.mesh, cfg.data.batch_size))
    state = trainer.initial_state
    for batch in batches[:warmup + 1]:
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready((state, m))
    t0 = _now()
    for batch in batches[warmup + 1:]:
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready((state, m))
    return (_now() - t0) / (len(batches) - 1 - warmup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--mixers", default="uniform,odm")
    ap.add_argument("--lags", default="1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_loop_"))
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    print(f"loop vs bare jitted step, {jax.devices()[0].platform}, {jax.device_count()} device(s), "
          f"{args.steps} steps ({args.warmup} warm-up), median of {args.reps} alternating runs")
    print(f"{'model':5s} {'mixer':8s} {'lag':>3s} {'bare ms':>9s} {'loop ms':>9s} {'overhead':>9s}"
          f"   | CPU time: {'bare ms':>9s} {'loop ms':>9s} {'overhead':>9s}")
    run = 0
    for model in args.models.split(","):
        for mixer in args.mixers.split(","):
            for lag in map(int, args.lags.split(",")):
                times = {"bare": [], "loop": []}
                data = None
                for _ in range(args.reps):
                    run += 1
                    cfg = config_lib.load(ROOT / MIXERS[mixer], [
                        *MODELS[model], f"data.lag={lag}", f"train.steps={args.steps}",
                        "train.eval_every=0", "train.ckpt_every=0", "train.progress=False",
                        f"train.log_every={args.steps}", f"train.run_dir={tmp / f'run{run}'}"])
                    data = data or build_data(cfg)
                    times["bare"].append(run_bare(cfg, data, args.warmup))
                    times["loop"].append(run_loop(cfg, data, args.warmup))
                bare, full = (np.median(np.stack(times[k]), axis=0) for k in ("bare", "loop"))
                ratios = sorted(lp[0] / b[0] - 1 for lp, b in zip(times["loop"], times["bare"]))
                per_rep = ", ".join(f"{100 * r:.1f}%" for r in ratios)
                print(f"{model:5s} {mixer:8s} {lag:3d} {bare[0] * 1e3:9.2f} {full[0] * 1e3:9.2f} "
                      f"{100 * (full[0] / bare[0] - 1):8.1f}%   |           "
                      f"{bare[1] * 1e3:9.2f} {full[1] * 1e3:9.2f} "
                      f"{100 * (full[1] / bare[1] - 1):8.1f}%   (wall per rep {per_rep})",
                      flush=True)


if __name__ == "__main__":
    main()
