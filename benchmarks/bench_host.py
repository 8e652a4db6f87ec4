"""Host cost per step: the real training loop driving a null step.

The device's share of a step is removed by replacing the Trainer's step with a
*null step*: a jitted function that returns the state (its ``step`` counter
advanced) and metrics of the contract's structure (:func:`mixjax.core.contract.
step_metrics`) at once. Everything else is the real ``mixjax.train.loop.train``:
the sampler (mixpile-tiny, byte tokenizer, grain pipelines and packing), the
batch composer, the feed (``data.prefetch``: the prefetch thread or the loop's own
thread draws, checks and places each batch), the lag-L wait of an
online mixer whose weights feed the sampler, the metrics flush, ``metrics.jsonl``
every ``--log-every`` steps (TensorBoard included), ``weights.jsonl`` and
checkpoints every ``--ckpt-every`` steps. So the wall time per step is what the
host costs, the time an accelerator would wait if the step itself took no time.

Online mixers (``odm``, ``groupdro`` and ``ado`` with ``apply_to=sampling``): the
null step returns weights that change every step,
``w_t = normalise(w(mix_state) * (1 + 0.01 cos t))``, so the loop hands new weights
to the sampler and to ``weights.jsonl`` on every step, as the real mixer does.

Window: from the end of warm-up step ``--warmup`` to the moment the loop has read the
last step's metrics (the start of the final evaluation); ms/step averaged over the
``--steps`` steps after warm-up; median of ``--reps`` runs. Besides wall and process CPU,
the CPU time of the main thread and of the prefetch thread per step (what waiting for the
GIL or for other jobs on the machine does not inflate). ``benchmarks/bench_host_ab.py``
runs this script against an older checkout and this one, alternating.

    python benchmarks/bench_host.py                       # the table (docs/training.md)
    python benchmarks/bench_host.py --token-store both --mixers uniform --steps 200
      # each configuration without and with data.token_store (pre-tokenised documents), in turn
    python benchmarks/bench_host.py --prefetch both --ckpt-every 0
      # each configuration with the prefetch thread, then drawing inline (data.prefetch)
    python benchmarks/bench_host.py --mixers odm --shapes 64x1024 --profile /tmp/host
      # cProfile of the main thread and the prefetch thread: /tmp/host.{main,prefetch}.prof
      # (``py-spy record -o x.svg -- python benchmarks/bench_host.py ...`` samples all
      # threads without instrumenting them, if py-spy is installed)

Targets: <= 0.5 ms/step at 16x128, <= 2 ms/step at 64x1024.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pathlib
import pstats
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

# MIXJAX_BENCH_ROOT: run this script against another checkout's code and configs (the
# side-by-side comparison of benchmarks/bench_host_ab.py); default this one.
ROOT = pathlib.Path(os.environ.get("MIXJAX_BENCH_ROOT") or pathlib.Path(__file__).parents[1])
ROOT = ROOT.resolve()
sys.path.insert(0, str(ROOT))

from mixjax import config as config_lib  # noqa: E402
from mixjax.train import checkpoint as ckpt_lib  # noqa: E402
from mixjax.core import contract  # noqa: E402
from mixjax.run import engine  # noqa: E402
from mixjax.train import loop, prefetch  # noqa: E402
from mixjax.train.data import build_data  # noqa: E402

# mixer -> (config, overrides); the online ones feed the sampler every step.
MIXERS = {
    "uniform": ("configs/lm_tiny_uniform.py", []),
    "odm": ("configs/lm_tiny_odm.py", ["mixing.apply_to=sampling"]),
    "groupdro": ("configs/lm_tiny_groupdro.py", ["mixing.apply_to=sampling"]),
    "ado": ("configs/lm_tiny_ado.py", ["mixing.apply_to=sampling"]),
}
TARGET_MS = {"16x128": 0.5, "64x1024": 2.0}


def null_step(trainer: loop.Trainer, online: bool):
    """``(state, batch) -> (state, metrics)``: no model, the metrics contract's structure."""
    weights_of = trainer.mixer.weights
    k = len(trainer.domains)

    def step(state, batch):
        w = jnp.asarray(weights_of(state.mix_state), jnp.float32)
        if online:   # a new weight vector every step, as an online mixer's
            w = w * (1.0 + 0.01 * jnp.cos(state.step.astype(jnp.float32)))
            w = w / w.sum()
        zeros = jnp.zeros((k,), jnp.float32)
        m = contract.step_metrics(
            step=state.step, domain_loss=zeros, domain_count=jnp.ones((k,), jnp.float32),
            weights=w, sampling_weights=batch["sampling_weights"], grad_norm=jnp.float32(0.0),
            nonfinite_domain=jnp.int32(-1), lr=jnp.float32(0.0))
        return state.replace(step=state.step + 1), m

    return jax.jit(step, donate_argnums=0)


def run(cfg, data, warmup: int, online: bool, prof: cProfile.Profile | None = None) -> np.ndarray:
    """Seconds after warm-up: (wall per step, process CPU per step, wall per step less the
    checkpoints', wall per checkpoint, main thread CPU per step, prefetch thread CPU per
    step) (see the module docstring).

    ``prof``: profiles the main thread over the timed window only."""
    marks, trainers = {}, []
    base = loop.Trainer

    class NullStepTrainer(base):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            step, self.last = null_step(self, online), None
            trainers.append(self)

            def recorded(state, batch):
                out = step(state, batch)
                self.last = out[1]
                return out
            self.train_step = recorded

        def evaluate(self, params):
            if "end" not in marks:
                marks["end"] = _now()
                if prof is not None:
                    prof.disable()
            return super().evaluate(params)

    def on_step(done):
        if done == warmup:
            jax.block_until_ready(trainers[0].last)
            marks["start"] = _now()
            if prof is not None:
                prof.enable()

    # Checkpoints (the finiteness check and the save call) are timed on their own too.
    ckpt_times = []
    finite, save = engine.all_finite, ckpt_lib.Checkpointer.save

    def timed(f):
        def g(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                if "start" in marks and "end" not in marks:
                    ckpt_times.append(time.perf_counter() - t0)
        return g

    loop.Trainer, engine.all_finite = NullStepTrainer, timed(finite)
    ckpt_lib.Checkpointer.save = timed(save)
    try:
        loop.train(cfg, data=data, on_step=on_step)
    finally:
        loop.Trainer, engine.all_finite, ckpt_lib.Checkpointer.save = base, finite, save
    n = cfg.train.steps - warmup
    wall, cpu, main_cpu, feed_cpu = (marks["end"] - marks["start"]) / n
    saves = max(1, len(ckpt_times) // 2)
    return np.array([wall, cpu, wall - sum(ckpt_times) / n, sum(ckpt_times) / saves,
                     main_cpu, feed_cpu])


def _now():
    """(wall, process CPU, main thread CPU, prefetch thread CPU) seconds."""
    return np.array([time.perf_counter(), time.process_time(), time.thread_time(),
                     _thread_cpu("mixjax-prefetch")])


def _thread_cpu(name: str) -> float:
    """CPU seconds of the live thread ``name`` (0 if none): what waiting cannot inflate."""
    for th in threading.enumerate():
        if th.name == name and th.ident is not None:
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(th.ident))
            except (OSError, AttributeError):   # not Linux / the thread just ended
                return float("nan")
    return 0.0


@contextlib.contextmanager
def profiled(path: pathlib.Path, main_prof: cProfile.Profile):
    """cProfile of the main thread (``main_prof``, enabled by :func:`run` over the timed
    window) and of the prefetch threads (all of their lives), each to its own file."""
    thread_prof = cProfile.Profile()
    run_thread = prefetch.BatchPrefetcher._run

    def _run(self):
        thread_prof.enable()
        try:
            run_thread(self)
        finally:
            thread_prof.disable()

    prefetch.BatchPrefetcher._run = _run
    try:
        yield
    finally:
        prefetch.BatchPrefetcher._run = run_thread
        for name, prof in (("main", main_prof), ("prefetch", thread_prof)):
            if not prof.getstats():    # no prefetch thread ran (data.prefetch=inline)
                continue
            out = path.with_name(f"{path.name}.{name}.prof")
            prof.dump_stats(out)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(f"--- {name} thread, by own time ({out}) ---\n{s.getvalue()}")


def prefetch_used(cfg) -> str:
    """Where the run drew its batches: "thread" or "inline" (an older checkout: "thread")."""
    if not hasattr(cfg.data, "prefetch"):
        return "thread"
    from mixjax.run import feeds
    return "inline" if feeds.draws_inline(cfg.data.prefetch) else "thread"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixers", default="uniform,odm,groupdro,ado")
    ap.add_argument("--shapes", default="16x128,64x1024", help="BxS, comma-separated")
    ap.add_argument("--steps", type=int, default=500, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--lag", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=100,
                    help="train.ckpt_every (0: only the final checkpoint, outside the window)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every run (e.g. data.workers=1)")
    ap.add_argument("--token-store", default="off", choices=("off", "on", "both"),
                    help="data.token_store: off, on, or both (each configuration without, then "
                         "with the store; its cache in the run's temporary directory)")
    ap.add_argument("--prefetch", default="config", choices=("config", "thread", "inline", "both"),
                    help="data.prefetch: the config's value, thread, inline, or both (each "
                         "configuration with the prefetch thread, then inline, in turn)")
    ap.add_argument("--profile", default=None, metavar="PATH",
                    help="write cProfile profiles PATH.main.prof and PATH.prefetch.prof")
    args = ap.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_host_"))
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    dev = jax.devices()[0]
    print(f"host ms/step, null step, {dev.platform} ({dev.device_kind}); {args.steps} steps after "
          f"{args.warmup} warm-up, median of {args.reps}; lag {args.lag}, log every "
          f"{args.log_every}, checkpoint every {args.ckpt_every}; load {loadavg()}")
    print("| mixer | B x S | token store | prefetch | host ms/step | CPU ms/step | ms/step without "
          "checkpoints | ms per checkpoint | main thread CPU ms/step | prefetch thread CPU "
          "ms/step | target ms/step | met | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    stores = {"off": (False,), "on": (True,), "both": (False, True)}[args.token_store]
    prefetches = {"config": (None,), "both": ("thread", "inline")}.get(args.prefetch,
                                                                         (args.prefetch,))
    prof = cProfile.Profile() if args.profile else None
    ctx = profiled(pathlib.Path(args.profile), prof) if args.profile else contextlib.nullcontext()
    n = 0
    with ctx:
        for shape in args.shapes.split(","):
            b, s = map(int, shape.split("x"))
            data = {}   # per token-store setting (the sampler factory reads the config)
            for mixer, store, pf in [(m, st, pf) for m in args.mixers.split(",")
                                     for st in stores for pf in prefetches]:
                path, extra = MIXERS[mixer]
                # only where the store is asked for: a checkout without the key still runs
                store_set = [f"data.token_store={store}", f"data.cache_dir={tmp / 'cache'}"] \
                    if args.token_store != "off" else []
                # (likewise data.prefetch, only where it is set)
                pf_set = [f"data.prefetch={pf}"] if pf else []
                times = []
                for _ in range(args.reps):
                    n += 1
                    cfg = config_lib.load(ROOT / path, [
                        *extra, f"data.batch_size={b}", f"data.seq_len={s}", f"data.lag={args.lag}",
                        f"train.steps={args.warmup + args.steps}", "train.eval_every=0",
                        f"train.ckpt_every={args.ckpt_every}", "train.progress=False",
                        f"train.log_every={args.log_every}", "eval.num_seqs=2",
                        f"train.run_dir={tmp / f'run{n}'}", *store_set, *pf_set, *args.set])
                    data[store] = data.get(store) or build_data(cfg)
                    times.append(run(cfg, data[store], args.warmup, online=mixer != "uniform",
                                     prof=prof))
                wall, cpu, bare, ckpt, main_cpu, feed_cpu = \
                    np.median(np.stack(times), axis=0) * 1e3
                target = TARGET_MS.get(shape)
                met = "" if target is None else ("yes" if wall <= target else "no")
                print(f"| {mixer} | {b} x {s} | {'on' if store else 'off'} | "
                      f"{prefetch_used(cfg)} | {wall:.3f} | {cpu:.3f} "
                      f"| {bare:.3f} | {ckpt:.0f} | {main_cpu:.3f} | {feed_cpu:.3f} "
                      f"| {target or '-'} | {met} | {loadavg()} |", flush=True)


if __name__ == "__main__":
    main()
