"""Leaderboard: every mixing method x 3 seeds on one budget, table with paired intervals.

    python experiments/leaderboard_mixpile.py --size tiny --seeds 3 --out runs/leaderboard_tiny
    python experiments/leaderboard_mixpile.py --size mixpile --seeds 3 --out runs/leaderboard_mixpile \
        [--methods stratified_uniform groupdro ...]

Steps: (1) the baseline (stratified uniform) grid, whose seed-0 run is the frozen reference of
DoReMi, tDRO and DRRho, and the Data Mixing Agent's policy (`mixjax search agent
configs/search_tiny_agent.py`, into OUT/agent_policy); (2) every method through `mixjax compare` (finished runs are reused, so the
command resumes where it stopped); (3) results.md / results.csv / plots in --out. The configs
and sizes are in configs/leaderboard_mixpile.py; the published table is docs/leaderboard.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs import leaderboard_mixpile as board  # noqa: E402
from mixjax.compare import runs as runs_lib  # noqa: E402
from mixjax.compare.cli import compare  # noqa: E402


def run(size: str, seeds: int, out: pathlib.Path, methods=board.METHODS, progress: bool = True,
        compile_cache: bool = True, overrides=()) -> dict:
    t0 = time.perf_counter()
    methods = list(dict.fromkeys([board.BASELINE, *methods]))
    reference = None
    if any(m in board.NEEDS_REFERENCE for m in methods):
        grid = runs_lib.plan_grid([board.base(size)], seeds, list(overrides), out)
        reference = str(grid[0].run_dir)      # the baseline's seed-0 run
    policy = None
    if any(m in board.NEEDS_POLICY for m in methods):
        policy = train_policy(out / "agent_policy", overrides)
    cfgs = board.configs(size, methods, reference=reference, policy=policy)
    res = compare(cfgs, seeds=seeds, out=out, baseline=board.BASELINE, progress=progress,
                  compile_cache=compile_cache, overrides=list(overrides))
    res["wall_s"] = time.perf_counter() - t0
    return res


def train_policy(out: pathlib.Path, overrides=()) -> str:
    """The Data Mixing Agent's policy (``mixjax search agent configs/search_tiny_agent.py``),
    trained once into ``out`` and reused (the route resumes or reuses its swarm)."""
    policy = out / "agent.json"
    if not policy.is_file():
        import subprocess
        cmd = [sys.executable, "-m", "mixjax", "search", "agent",
               str(ROOT / "configs" / "search_tiny_agent.py"), "--out", str(out)]
        for o in overrides:   # e.g. train.steps for a smoke run
            cmd += ["--set", o]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return str(policy)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "mixpile"), default="tiny")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", nargs="+", default=list(board.METHODS), choices=board.METHODS)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every method (e.g. train.steps=20 for a smoke run)")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out or f"runs/leaderboard_{args.size}")
    try:
        res = run(args.size, args.seeds, out, args.methods, progress=not args.no_progress,
                  overrides=args.overrides)
    except runs_lib.CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["results_md"].read_text())
    print(f"leaderboard ({args.size}, {args.seeds} seeds, {len(args.methods)} methods): {res['wall_s']:.0f} s; "
          f"runs {res['counts']}; table in {out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
