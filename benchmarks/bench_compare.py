"""Runs per minute of `mixjax compare` (one process, compiled step reused across seeds through the
persistent compilation cache) against the same runs as separate `mixjax train` processes.

    .venv/bin/python benchmarks/bench_compare.py [--seeds 3] [--steps 40] [--out /tmp/bench_compare]

Grid: configs/lm_tiny_uniform.py, lm_tiny_groupdro.py, lm_tiny_odm.py x ``--seeds`` seeds, each
shortened to ``--steps`` steps (evaluation at the end only) so that the fixed per-run cost
(imports, data, compile) is visible next to the steps. Both variants train identical configs
(same seeds, same overrides) into fresh directories; the compare side skips its test-split
evaluation so both do the same work. Prints wall seconds, runs/min and the ratio.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "configs" / f"lm_tiny_{m}.py") for m in ("uniform", "groupdro", "odm")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="/tmp/bench_compare")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"train.steps={args.steps}", "train.eval_every=0", "train.ckpt_every=0", "train.progress=False"]
    n = len(CONFIGS) * args.seeds

    # A: separate processes, one `mixjax train` per run (what a shell loop does)
    t0 = time.perf_counter()
    for cfg in CONFIGS:
        for s in range(args.seeds):
            sets = sum((["--set", o] for o in overrides + [f"train.seed={s}", f"data.seed={s}",
                                                           f"train.run_dir={out}/procs/{pathlib.Path(cfg).stem}-{s}"]), [])
            subprocess.run([sys.executable, "-c", "import sys; from mixjax.cli import main; sys.exit(main())",
                            "train", cfg, *sets], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    procs = time.perf_counter() - t0

    # B: one `mixjax compare` process for the whole grid
    t0 = time.perf_counter()
    sets = sum((["--set", o] for o in overrides), [])
    subprocess.run([sys.executable, "-c", "import sys; from mixjax.cli import main; sys.exit(main())",
                    "compare", *CONFIGS, "--seeds", str(args.seeds), "--out", str(out / "compare"),
                    "--no-test", "--no-progress", *sets], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    grid = time.perf_counter() - t0
    print(f"{n} runs of {args.steps} steps (lm_tiny_uniform/groupdro/odm x {args.seeds} seeds)")
    print(f"separate `mixjax train` processes: {procs:7.1f} s  {60 * n / procs:6.2f} runs/min")
    print(f"one `mixjax compare` process:      {grid:7.1f} s  {60 * n / grid:6.2f} runs/min "
          f"(incl. the table and plots)")
    print(f"ratio compare / processes (runs per minute): {procs / grid:.2f}x")


if __name__ == "__main__":
    main()
