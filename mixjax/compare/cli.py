"""``mixjax compare``: several methods x several seeds on one budget, with intervals.

    mixjax compare CONFIG... --seeds N [--set key=value ...] --out DIR [--baseline NAME]
    mixjax compare --runs RUN_DIR... --out DIR [--baseline NAME]
    mixjax compare CONFIG... --seeds N --swarm --out DIR   (static mixtures: the seeds of
                   each config as one proxy swarm; mixjax.compare.swarm_seeds)

The first form trains (or reuses, or resumes) every config with seeds 0..N-1
under ``DIR/runs/`` (see :mod:`mixjax.compare.runs`), the second tabulates
finished runs. Both then evaluate each run's final checkpoint on the test split
(cached under ``DIR/evals/``), check that all runs share tokenizer and eval
sets, and write ``DIR/results.md``, ``DIR/results.csv`` and the plots
``ppl_validation.png``, ``ppl_test.png``, ``weights.png``, ``loss.png``,
``loss_domains.png``.

Exit codes: 0 done; 2 bad input (unknown baseline, seeds < 1, runs with
different eval sets or tokenizers, a directory that is not a finished run, a
config error), reported before anything trains; nothing in DIR is overwritten
except the results files of an earlier compare into the same DIR.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("configs", nargs="*", metavar="CONFIG", help="config files (one method each)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="RUN_DIR",
                        help="tabulate these finished runs instead of training")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config (0..N-1; default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every config, e.g. train.steps=100")
    parser.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    parser.add_argument("--baseline", default=None,
                        help="method (config name) to compare against (default: stratified uniform)")
    parser.add_argument("--no-test", action="store_true", help="skip the test-split evaluation")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not reuse compiled steps across runs (JAX persistent cache in DIR/.jax_cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--swarm", action="store_true",
                        help="static mixtures only: each config's seeds as one proxy swarm "
                             "(mixjax.compare.swarm_seeds; a reduced report)")


def _enable_compile_cache(path: pathlib.Path) -> None:
    """Runs of one grid differ only in their seed: the same step compiles to the same executable,
    which the persistent cache then serves instead of compiling again."""
    import jax
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def compare(configs=(), *, runs=None, seeds: int = 3, overrides=(), out="runs/compare", baseline=None,
            test: bool = True, progress: bool = True, compile_cache: bool = False) -> dict:
    """The whole command as a function (see module docstring); raises CompareError on bad input."""
    from mixjax.compare import report
    from mixjax.compare import runs as runs_lib
    out = pathlib.Path(out)
    t0 = time.perf_counter()
    if runs and configs:
        raise runs_lib.CompareError("give CONFIG files or --runs RUN_DIR..., not both")
    if out.exists() and not out.is_dir():
        raise runs_lib.CompareError(f"--out {str(out)!r} exists and is not a directory")
    cache = runs_lib._DataCache()
    if runs:
        run_dirs = [pathlib.Path(r) for r in runs]
        counts = {"reused": len(run_dirs), "trained": 0, "resumed": 0}
        for r in run_dirs:   # every dir checked before anything is evaluated
            _check_run_dir(r)
        names = list(dict.fromkeys(json.loads((r / "config.json").read_text()).get("name") for r in run_dirs))
        if baseline is not None and baseline not in names:
            raise runs_lib.CompareError(f"unknown baseline {baseline!r}; methods in these runs: {', '.join(map(str, names))}")
    else:
        grid = runs_lib.plan_grid(list(configs), seeds, list(overrides), out)
        # a baseline name must be known before hours of training
        names = list(dict.fromkeys(r.method for r in grid))
        if baseline is not None and baseline not in names:
            raise runs_lib.CompareError(f"unknown baseline {baseline!r}; methods in this comparison: {', '.join(names)}")
        if baseline is None:
            uniform = [r.method for r in grid if r.cfg.mixing.name == "uniform"]
            if not uniform:
                raise runs_lib.CompareError("no baseline: none of the configs is the uniform mixture; pass "
                                            f"--baseline NAME (methods: {', '.join(names)})")
        if compile_cache:
            _enable_compile_cache(out / ".jax_cache")
        counts = runs_lib.run_grid(grid, progress=progress)
        run_dirs = [r.run_dir for r in grid]
    records = [runs_lib.load_run(r, test=test, cache=cache, eval_cache_dir=out / "evals") for r in run_dirs]
    runs_lib.check_comparable(records)
    summary = report.summarise(records, baseline)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - t0
    header = (f"{len(records)} runs ({counts['trained']} trained, {counts['resumed']} resumed, "
              f"{counts['reused']} reused) of {len(summary['methods'])} methods; "
              f"{records[0].tokens:,} training tokens per run; {seconds:.0f} s for this command.")
    md, csv_path = report.write_tables(summary, out, header)
    plots = report.write_plots(summary, records, out)
    (out / "runs.json").write_text(json.dumps(
        [{"method": r.method, "seed": r.seed, "run_dir": str(r.run_dir), "val_eval_sha256": r.val_checksum,
          "test_eval_sha256": r.test_checksum} for r in records], indent=2) + "\n")
    return {"summary": summary, "results_md": md, "results_csv": csv_path, "plots": plots, "counts": counts,
            "seconds": seconds, "records": records}


def _check_run_dir(path: pathlib.Path) -> None:
    from mixjax.compare.runs import CompareError
    if not path.is_dir():
        raise CompareError(f"{str(path)!r} is not a run directory (it does not exist)")
    if not (path / "config.json").is_file() or not (path / "run_info.json").is_file():
        raise CompareError(f"{str(path)!r} is not a run directory (no config.json / run_info.json "
                           "written by `mixjax train`)")


def run(args: argparse.Namespace) -> int:
    from mixjax.compare.runs import CompareError
    from mixjax.config import ConfigError
    from mixjax.train.loop import RunDirError
    try:
        if args.swarm:
            if args.runs:
                raise CompareError("--swarm trains; it does not take --runs")
            from mixjax.compare.swarm_seeds import compare_swarm
            res = compare_swarm(args.configs, seeds=args.seeds, overrides=args.overrides,
                                out=args.out, baseline=args.baseline)
            print(res["results_md"].read_text())
            return 0
        res = compare(args.configs, runs=args.runs, seeds=args.seeds, overrides=args.overrides, out=args.out,
                      baseline=args.baseline, test=not args.no_test, progress=not args.no_progress,
                      compile_cache=not args.no_compile_cache)
    except (CompareError, ConfigError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["results_md"].read_text())
    print(f"wrote {res['results_md']}, {res['results_csv']} and {len(res['plots'])} plots "
          f"in {res['seconds']:.0f} s")
    return 0
