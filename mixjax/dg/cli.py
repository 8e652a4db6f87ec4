"""``mixjax dg sweep CONFIG [--set k=v ...] [--out DIR] [--data-dir DIR]`` and
``mixjax dg table RUN_DIR [RUN_DIR ...] [--out DIR] [--latex]``.

Exit codes of ``sweep``: 0 done; 2 bad config or data; 128 + signal number when stopped by
SIGTERM/SIGINT (the running unit checkpointed; the same command resumes it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def add_arguments(parser: argparse.ArgumentParser, command_name: str = "dg") -> None:
    sub = parser.add_subparsers(dest="dg_command", required=True)
    sw = sub.add_parser("sweep", help="run a DomainBed-style sweep (vmapped groups of runs)")
    sw.add_argument("config", help="configs/dg_*.py with get_config() -> SweepConfig")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. --set steps=300 --set algorithms=[erm,irm]")
    sw.add_argument("--out", "--run-dir", dest="run_dir", default=None,
                    help="output directory (default: the config's output_dir)")
    sw.add_argument("--data-dir", default=None,
                    help="folder holding DomainBed's image datasets (DIR/PACS/<domain>/<class>/*.jpg, ...)")
    sw.add_argument("--no-table", action="store_true", help="do not write results.md/.csv at the end")
    tb = sub.add_parser("table", help="results tables (markdown + CSV) for a sweep's run directory")
    tb.add_argument("run_dir")
    tb.add_argument("more", nargs="*", metavar="RUN_DIR",
                    help="more sweeps in the same tables (e.g. the same sweep with and without label noise)")
    tb.add_argument("--out", default=None, help="where the tables go (default: the first RUN_DIR)")
    tb.add_argument("--latex", action="store_true",
                    help="also write results.tex (DomainBed's collect_results.py --latex layout)")


def _env_names(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "envs.json"
    return json.loads(path.read_text()) if path.exists() else None


def run(args: argparse.Namespace) -> int:
    from mixjax.config import ConfigError

    if args.dg_command == "sweep":
        from mixjax.dg import config as C
        from mixjax.dg.sweep import sweep

        try:
            cfg = C.load(args.config, args.overrides, data_dir=args.data_dir)
        except (ConfigError, KeyError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        from mixjax.dg.image_folder import ImageFolderError

        try:
            run_dir = sweep(cfg, args.run_dir)
        except (ConfigError, ImageFolderError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not args.no_table:
            return _table(run_dir)
        return 0
    if args.dg_command == "table":
        return _table(pathlib.Path(args.run_dir), latex=args.latex, more=args.more, out=args.out)
    raise ValueError(f"unknown dg command {args.dg_command!r}")


def _table(run_dir: pathlib.Path, latex: bool = False, more=(), out=None) -> int:
    from mixjax.dg.report import write_tables

    names = {}
    for d in reversed([run_dir, *map(pathlib.Path, more)]):   # the first directory's names win
        names.update(_env_names(d) or {})
    try:
        paths = write_tables(run_dir, names or None, latex_table=latex, more=more, out=out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0
