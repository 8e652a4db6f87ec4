"""Side by side: ``bench_host.py`` against an older checkout and this one, alternating.

    git worktree add /tmp/base <commit>      # or: git archive <commit> | tar -x -C /tmp/base
    python benchmarks/bench_host_ab.py --old /tmp/base --rounds 2 -- --mixers uniform,odm --steps 500

Every round runs ``bench_host.py`` (this checkout's script, so both sides are measured
the same way) once with ``MIXJAX_BENCH_ROOT=--old`` and once with this checkout, in
alternating order (old first in even rounds), each in its own process; the rows of
both are printed together, tagged ``old``/``new`` and the round, with the load average.
The columns that waiting cannot inflate are the CPU ones (process, main thread, prefetch
thread); on a shared machine compare those first.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="the other checkout (its mixjax/ and configs/)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="also run this checkout with sys.setswitchinterval(S) (tagged new+sw)")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    extra = [a for a in args.bench_args if a != "--"]
    sides = [("old", args.old, None), ("new", str(HERE.parents[1]), None)]
    if args.switch_interval is not None:
        sides.append(("new+sw", str(HERE.parents[1]), args.switch_interval))
    header = None
    for r in range(args.rounds):
        for tag, root, sw in (sides if r % 2 == 0 else sides[::-1]):
            env = {**os.environ, "MIXJAX_BENCH_ROOT": root, "PYTHONPATH": root}
            cmd = [sys.executable, str(HERE.with_name("bench_host.py")), *extra]
            if sw is not None:
                cmd = [sys.executable, "-c", "import runpy, sys; sys.setswitchinterval("
                       f"{sw}); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                       "run_name='__main__')", *cmd[1:]]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{tag}: bench_host failed:\n{out.stderr[-2000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("| mixer"):
                    if header is None:
                        header = line
                        print("| side | round " + line)
                        print("|---|---" + "|---" * (line.count("|") - 1) + "|")
                elif line.startswith("| ") and not line.startswith("|---"):
                    print(f"| {tag} | {r + 1} {line}", flush=True)


if __name__ == "__main__":
    main()
