"""Proxy swarm throughput (vmap vs lax.map), memory estimate vs XLA, swarm vs separate runs.

    python benchmarks/bench_swarm.py [--proxies 1,8,32] [--steps 10] [--separate 8] [--skip-steps]
                                     [--config configs/search_tiny_regmix.py] [--skip-separate]

1. Step throughput: proxies x steps / s of the compiled swarm step (compile excluded, the
   data pipeline included: the route's host batches are drawn every step), for each P and
   each strategy (vmap, map), with the search config's proxy model and route.
2. Memory: the swarm's config-only estimate (``Swarm.memory_estimate``) next to XLA's
   compiled memory analysis (arguments + outputs - aliased + temporaries) of the same step;
   ratio estimate / XLA.
3. Swarm vs separate processes: ``--separate N`` separate ``mixjax train`` processes
   (the same proxy config, each its own mixture, one after another as a sweep would run
   on this machine) against one process training a swarm of the same N proxies and
   steps; both sides timed end to end (process start, imports, data, compile, train,
   eval, checkpoints), wall and CPU seconds (CPU time is less sensitive to other jobs on
   a shared machine), with the swarm's own phases (``SwarmResult.timings``) and the load
   average before and after each side.

Re-run on an idle machine (the issue's target: >= 3x at the search's proxy count):

    python benchmarks/bench_swarm.py --skip-steps --separate 32     # ~15 min on 2 idle cores
    python benchmarks/bench_swarm.py --skip-separate                # sections 1-2 only

On a GPU the same script runs P up to 512 (``--proxies 1,8,32,128,512``).

``--host-only``: the host side alone, ms per ``next(batches)`` of the upsample route
(every proxy's composition and rows) at each P, the current draw (all proxies' rows in one
read) next to the previous one (one read per proxy), alternating, same stream::

    python benchmarks/bench_swarm.py --host-only --proxies 128,512 --steps 20
Every number printed comes from this run; note the machine's load (printed) when
comparing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixjax.search import designs, settings as search_settings, swarm as S  # noqa: E402
from mixjax.train.data import build_data  # noqa: E402


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def bench_step(cfg, data, p: int, strategy: str, route: str, steps: int) -> dict:
    mix = designs.dirichlet(p, len(data.domains), seed=0)
    sw = S.Swarm(cfg, mix, route=route, strategy=strategy, data=data)
    state = sw.init_state()
    batches = sw.make_batches()
    est = sw.memory_estimate()["total"]
    xla = S.compiled_memory_bytes(sw)
    if steps == 0:   # memory only
        return {"P": p, "strategy": strategy, "proxy_steps_per_s": float("nan"),
                "compile_s": float("nan"), "est_MiB": est / 2**20, "xla_MiB": xla / 2**20,
                "est_over_xla": est / max(xla, 1)}
    step = sw.train_step()
    t = time.perf_counter()
    state, m = step(state, sw.device_batch(next(batches)))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, sw.device_batch(next(batches)))
    jax.block_until_ready(m)
    dt = time.perf_counter() - t
    return {"P": p, "strategy": strategy, "proxy_steps_per_s": p * steps / dt,
            "compile_s": compile_s, "est_MiB": est / 2**20, "xla_MiB": xla / 2**20,
            "est_over_xla": est / max(xla, 1)}


def bench_host(cfg, data, p: int, steps: int, reps: int = 3) -> dict:
    """ms per upsample batch: the current draw vs one read per proxy (the previous one)."""
    mix = designs.dirichlet(p, len(data.domains), seed=0)
    sw = S.Swarm(cfg, mix, route="upsample", strategy="vmap", data=data)

    def per_proxy(b):   # the draw before all proxies' rows were read at once
        n, s = len(b.composers), b.sampler.seq_len + 1
        tokens = np.empty((n, b.sampler.batch_size, s), np.int32)
        for q, comp in enumerate(b.composers):
            ids, _ = comp.next_ids()
            tokens[q] = b.sampler.read_rows(ids)
        return tokens

    out = {"now": [], "before": []}
    for _ in range(reps):
        for name in out:
            b = sw.make_batches()
            draw = (lambda: next(b)) if name == "now" else (lambda: per_proxy(b))
            draw()   # pipelines built, first documents read
            t = time.perf_counter()
            for _ in range(steps):
                draw()
            out[name].append((time.perf_counter() - t) / steps * 1e3)
    return {k: float(np.median(v)) for k, v in out.items()}


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def separate_runs(config: str, proxy_overrides, mixtures, domains, steps: int, work):
    """``(wall s, CPU s)`` of one ``mixjax train`` process per mixture, one after another."""
    t0, c0 = time.perf_counter(), _child_cpu()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, h in enumerate(mixtures):
        w = {d: float(x) for d, x in zip(domains, h)}
        cmd = [sys.executable, "-c", "import sys; from mixjax.cli import main; sys.exit(main())",
               "train", config, *sum((["--set", o] for o in proxy_overrides), []),
               "--set", f"train.steps={steps}", "--set", "train.progress=False",
               "--set", f"train.run_dir={work}/sep{i}", "--set", "mixing.name=manual",
               "--set", f"mixing.hparams={json.dumps({'weights_by_domain': w})}"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _child_cpu() - c0


def swarm_process(config: str, n: int, seed: int, work) -> tuple[float, float, dict]:
    """``(wall s, CPU s, phase timings)`` of the same proxies as one swarm, run as one
    process too (process start, imports, data, init, compile, train, eval, checkpoints)."""
    t0, c0 = time.perf_counter(), _child_cpu()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = pathlib.Path(work) / "swarm_timings.json"
    subprocess.run([sys.executable, __file__, "--config", config, "--swarm-child", str(n),
                    "--swarm-seed", str(seed), "--swarm-out", str(out)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, _child_cpu() - c0, json.loads(out.read_text())


def swarm_child(config: str, n: int, seed: int, out: pathlib.Path) -> None:
    target, proxy, settings = search_settings.load_search_config(config)
    proxy.train.progress = False
    data = build_data(proxy)
    mix = designs.dirichlet(n, len(data.domains), seed=seed)
    sw = S.Swarm(proxy, mix, route=settings["route"], strategy=settings["strategy"], data=data)
    res = S.train_swarm(sw, out.parent / "swarm")
    out.write_text(json.dumps({"strategy": sw.strategy, "seconds": res.seconds,
                               "timings": res.timings}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/search_tiny_regmix.py"))
    ap.add_argument("--proxies", default="1,8,32")
    ap.add_argument("--strategies", default="vmap,map")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (0: memory only)")
    ap.add_argument("--skip-steps", action="store_true", help="skip sections 1-2")
    ap.add_argument("--separate", type=int, default=8,
                    help="proxies of the swarm vs separate processes comparison")
    ap.add_argument("--skip-separate", action="store_true")
    ap.add_argument("--host-only", action="store_true",
                    help="time the upsample route's batch drawing alone (see the docstring)")
    ap.add_argument("--swarm-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--swarm-seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--swarm-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.swarm_child is not None:
        swarm_child(args.config, args.swarm_child, args.swarm_seed, pathlib.Path(args.swarm_out))
        return
    target, proxy, settings = search_settings.load_search_config(args.config)
    proxy.train.progress = False
    data = build_data(proxy)
    print(f"backend {jax.default_backend()}, devices {len(jax.devices())}, cores "
          f"{os.cpu_count()}, load {loadavg()}; proxy d_model {proxy.model.d_model} x "
          f"{proxy.model.num_layers} layers, batch {proxy.data.batch_size} x "
          f"{proxy.data.seq_len}, route {settings['route']}", flush=True)
    if args.host_only:
        print(f"{'P':>4} {'ms/batch now':>13} {'ms/batch before':>16} {'speed-up':>9}  load")
        for p in (int(x) for x in args.proxies.split(",")):
            r = bench_host(proxy, data, p, args.steps)
            print(f"{p:>4} {r['now']:>13.2f} {r['before']:>16.2f} "
                  f"{r['before'] / r['now']:>8.1f}x  {loadavg()}", flush=True)
        return
    if not args.skip_steps:
        print(f"{'P':>4} {'strategy':>8} {'proxy*steps/s':>14} {'compile s':>10} "
              f"{'est MiB':>8} {'XLA MiB':>8} {'est/XLA':>8}")
        for p in (int(x) for x in args.proxies.split(",")):
            for strategy in args.strategies.split(","):
                r = bench_step(proxy, data, p, strategy, settings["route"], args.steps)
                print(f"{r['P']:>4} {r['strategy']:>8} {r['proxy_steps_per_s']:>14.2f} "
                      f"{r['compile_s']:>10.1f} {r['est_MiB']:>8.1f} {r['xla_MiB']:>8.1f} "
                      f"{r['est_over_xla']:>8.2f}", flush=True)
        print(f"load {loadavg()}")
    if args.skip_separate:
        return
    n, steps = args.separate, proxy.train.steps
    mix = designs.dirichlet(n, len(data.domains), seed=1)
    with tempfile.TemporaryDirectory() as work:
        load0 = loadavg()
        sep, sep_cpu = separate_runs(args.config, settings["proxy_overrides"], mix,
                                     data.domains, steps, work)
        load1 = loadavg()
        sw, sw_cpu, rec = swarm_process(args.config, n, 1, work)
        load2 = loadavg()
    print(f"{n} proxies x {steps} steps, each side one or more whole processes:")
    print(f"  separate `mixjax train` processes: {sep:.1f} s wall, {sep_cpu:.1f} s CPU "
          f"({sep / n:.1f} s per proxy); load {load0} -> {load1}")
    print(f"  one swarm process ({rec['strategy']}):   {sw:.1f} s wall, {sw_cpu:.1f} s CPU; "
          f"load {load1} -> {load2}")
    t = rec["timings"]
    print("  swarm phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
          + f"; outside train_swarm (start, imports, data) {sw - rec['seconds']:.1f}")
    print(f"  ratio separate / swarm: wall {sep / sw:.2f}x, CPU {sep_cpu / sw_cpu:.2f}x")


if __name__ == "__main__":
    main()
