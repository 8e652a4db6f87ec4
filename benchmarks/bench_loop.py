"""Loop overhead: the full ``mixjax train`` loop vs the bare jitted step on the same batches.

For each model (``tiny`` = the quickstart LM of ``configs/lm_tiny_uniform.py``,
~0.5M params, B=16 x S=128; ``10m`` = 6 layers x d_model 384, B=8 x S=256, as in
``benchmarks/bench_train.py``), each mixer (``uniform``: static; ``odm``: online,
its weights feed the sampler) and each ``data.lag`` (1, 2):

* ``loop``: ``mixjax.train.loop.train`` on mixpile-tiny for ``--steps`` steps
  (no periodic eval or checkpoint, one log record at the end). The window runs
  from the completion of step ``--warmup`` (the loop's ``on_step`` callback
  blocks on that step's outputs, as the bare loop does) to the start of the
  final evaluation, which the loop enters only after it has read the last
  step's metrics. So it excludes the Trainer build, compilation and the final
  evaluation/checkpoint, and includes everything the loop does per step:
  drawing, assembling and placing batches (on the prefetch thread), the step,
  reading and writing metrics, the lag-``L`` wait on step ``t-L``'s weights.
* ``bare``: the same Trainer's jitted step over batches drawn up front from the
  same sampler (seeded alike: the very batches of a static mixer's loop) and
  already on the device, dispatched back to back, one block at the end.
* ``ref`` (``--compare-ref REV``): the loop of git revision ``REV``
  (``mixjax/train/loop.py`` and ``mixjax/data/sampler.py`` as they were there,
  on the current rest of the package), timed the same way: before/after in one run.

``overhead = loop / bare - 1`` per step, in wall-clock time and in this
process's CPU time (``time.process_time``, all threads: less sensitive to other
jobs on a shared machine, blind to waiting). On a GPU the wall-clock difference
``loop - bare`` is the device's idle time per step. Each configuration runs
``--reps`` times, bare / loop / ref alternating (shared machines drift), medians.
Compilations are shared through JAX's persistent cache in a temporary directory.

Command (CPU, about 5 minutes for the tiny model; numbers in docs/training.md)::

    python benchmarks/bench_loop.py --compare-ref main              # tiny model
    python benchmarks/bench_loop.py --models tiny,10m --steps 40
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from mixjax import config as config_lib
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


def load_revision(rev: str, tmp: pathlib.Path):
    """``(loop module, DomainSampler class)`` of git revision ``rev`` (or of the ``loop.py``
    and ``sampler.py`` in directory ``rev``, for a copy of the tree without git)."""
    mods = []
    for name, path in (("sampler", "mixjax/data/sampler.py"), ("loop", "mixjax/train/loop.py")):
        if pathlib.Path(rev).is_dir():
            src = (pathlib.Path(rev) / pathlib.Path(path).name).read_text()
        else:
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                                 capture_output=True, text=True).stdout
        file = tmp / f"ref_{name}.py"
        file.write_text(src)
        spec = importlib.util.spec_from_file_location(f"mixjax_ref_{name}", file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[1], mods[0].DomainSampler


@contextlib.contextmanager
def sampler_class(cls):
    """``build_data``'s samplers are ``cls`` while active (``mixjax.data.DomainSampler``)."""
    import mixjax.data as data
    old = data.DomainSampler
    data.DomainSampler = cls or old
    try:
        yield
    finally:
        data.DomainSampler = old


def run_loop(loop_module, cfg, data, warmup: int) -> np.ndarray:
    """(wall, process CPU) seconds per step of ``loop_module.train`` (see the docstring)."""
    marks, trainers = {}, []
    base = loop_module.Trainer

    class Timed(base):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            step, self.last = self.train_step, None
            trainers.append(self)

            def timed_step(state, batch):
                out = step(state, batch)
                self.last = out[1]
                return out
            self.train_step = timed_step

        def evaluate(self, params):
            marks.setdefault("end", _now())
            return super().evaluate(params)

    def on_step(done):
        if done == warmup:
            jax.block_until_ready(trainers[0].last)
            marks["start"] = _now()

    loop_module.Trainer = Timed
    try:
        loop_module.train(cfg, data=data, on_step=on_step)
    finally:
        loop_module.Trainer = base
    return (marks["end"] - marks["start"]) / (cfg.train.steps - warmup)


def run_bare(cfg, data, warmup: int) -> np.ndarray:
    trainer = loop.Trainer(cfg, data)
    sampler = trainer.data.make_sampler(trainer.sampler_weights())
    make = loop.batch_maker(trainer)
    batches = []
    for t in range(cfg.train.steps):
        p = sampler.weights_for(t)
        batches.append(make(next(sampler), p, t))
    jax.block_until_ready(batches)
    state = trainer.initial_state
    for batch in batches[:warmup]:
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready((state, m))
    t0 = _now()
    for batch in batches[warmup:]:
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready((state, m))
    return (_now() - t0) / (len(batches) - warmup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--mixers", default="uniform,odm")
    ap.add_argument("--lags", default="1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compare-ref", default=None, metavar="REV",
                    help="also time the loop (and sampler) of this git revision (or directory)")
    ap.add_argument("--log-every", type=int, default=None,
                    help="train.log_every of the loop runs (default: --steps, one record)")
    ap.add_argument("--prefetch", default="config", choices=("config", "thread", "inline", "both"),
                    help="data.prefetch of the loop runs (both: a 'thread' and an 'inline' "
                         "variant, alternating with the bare step)")
    args = ap.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_loop_"))
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # variant -> (loop module, sampler class, data.prefetch override or None)
    variants = {"loop": (loop, None, None)} if args.prefetch == "config" else \
        {pf: (loop, None, pf) for pf in (("thread", "inline") if args.prefetch == "both"
                                          else (args.prefetch,))}
    if args.compare_ref:
        variants["ref"] = (*load_revision(args.compare_ref, tmp), None)
    platform = jax.devices()[0].platform
    print(f"loop vs bare jitted step, {platform} ({jax.devices()[0].device_kind}), "
          f"{jax.device_count()} device(s), {args.steps} steps ({args.warmup} warm-up), "
          f"median of {args.reps} alternating runs"
          + (f"; ref = loop of {args.compare_ref}" if args.compare_ref else ""))
    idle = platform == "gpu"
    print(f"{'model':5s} {'mixer':8s} {'lag':>3s} {'variant':7s} {'bare ms':>9s} {'loop ms':>9s} "
          f"{'overhead':>9s}" + ("  idle ms/step" if idle else "")
          + f"   | CPU time: {'bare ms':>9s} {'loop ms':>9s} {'overhead':>9s}")
    run = 0
    for model in args.models.split(","):
        for mixer in args.mixers.split(","):
            for lag in map(int, args.lags.split(",")):
                times = {"bare": [], **{v: [] for v in variants}}
                data = None
                for _ in range(args.reps):
                    for name in times:
                        run += 1
                        cfg = config_lib.load(ROOT / MIXERS[mixer], [
                            *MODELS[model], f"data.lag={lag}", f"train.steps={args.steps}",
                            "train.eval_every=0", "train.ckpt_every=0", "train.progress=False",
                            f"train.log_every={args.log_every or args.steps}", f"train.run_dir={tmp / f'run{run}'}",
                            *([f"data.prefetch={variants[name][2]}"]
                              if name in variants and variants[name][2] else [])])
                        data = data or build_data(cfg)
                        if name == "bare":
                            times[name].append(run_bare(cfg, data, args.warmup))
                        else:
                            module, cls, _ = variants[name]
                            with sampler_class(cls):
                                times[name].append(run_loop(module, cfg, data, args.warmup))
                bare = np.median(np.stack(times["bare"]), axis=0)
                for name in variants:
                    full = np.median(np.stack(times[name]), axis=0)
                    ratios = sorted(lp[0] / b[0] - 1 for lp, b in zip(times[name], times["bare"]))
                    per_rep = ", ".join(f"{100 * r:.1f}%" for r in ratios)
                    print(f"{model:5s} {mixer:8s} {lag:3d} {name:7s} {bare[0] * 1e3:9.2f} "
                          f"{full[0] * 1e3:9.2f} {100 * (full[0] / bare[0] - 1):8.1f}%"
                          + (f"  {(full[0] - bare[0]) * 1e3:13.3f}" if idle else "")
                          + f"   |           {bare[1] * 1e3:9.2f} {full[1] * 1e3:9.2f} "
                          f"{100 * (full[1] / bare[1] - 1):8.1f}%   (wall per rep {per_rep})",
                          flush=True)


if __name__ == "__main__":
    main()
