"""``mixjax dg sweep CONFIG [--set k=v ...] [--out DIR]`` and ``mixjax dg table RUN_DIR``."""

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
    sw.add_argument("--no-table", action="store_true", help="do not write results.md/.csv at the end")
    tb = sub.add_parser("table", help="results tables (markdown + CSV) for a sweep's run directory")
    tb.add_argument("run_dir")


def _env_names(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "envs.json"
    return json.loads(path.read_text()) if path.exists() else None


def run(args: argparse.Namespace) -> int:
    from mixjax.config import ConfigError

    if args.dg_command == "sweep":
        from mixjax.dg import config as C
        from mixjax.dg.sweep import sweep

        try:
            cfg = C.load(args.config, args.overrides)
        except (ConfigError, KeyError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        run_dir = sweep(cfg, args.run_dir)
        if not args.no_table:
            return _table(run_dir)
        return 0
    if args.dg_command == "table":
        return _table(pathlib.Path(args.run_dir))
    raise ValueError(f"unknown dg command {args.dg_command!r}")


def _table(run_dir: pathlib.Path) -> int:
    from mixjax.dg.report import write_tables

    try:
        md, cs = write_tables(run_dir, _env_names(run_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {md} and {cs}")
    return 0
