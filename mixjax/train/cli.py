"""``mixjax train`` and ``mixjax eval``.

    mixjax train CONFIG.py [--set key=value ...] [--resume | --resume-from STEP]
                           [--rebuild-schedule]  [--out RUN_DIR]
    mixjax eval RUN_DIR [--step N] [--split validation|test] [--num-seqs N]
    (both take --plugin MODULE; eval imports the plugins the run recorded by itself)

Exit codes: 0 done; 2 bad config, data, run dir or checkpoint, or a run stopped
by a non-finite loss (one ``error:`` line, :func:`mixjax.cli.main`); 128 + signal
number when stopped by SIGTERM/SIGINT (a checkpoint was saved; ``--resume``
continues it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "train":
        parser.add_argument("config", help="config file (a Python module with get_config(), "
                            "or a run dir's saved config.json)")
        parser.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="KEY=VALUE", help="dotted override, e.g. train.steps=200")
        parser.add_argument("--out", default=None, metavar="RUN_DIR",
                            help="the run directory (same as --set train.run_dir=RUN_DIR)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in train.run_dir from its latest intact "
                                 "checkpoint (a damaged one is moved aside)")
        parser.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                            help="continue from checkpoint STEP (newer ones are moved aside)")
        parser.add_argument("--rebuild-schedule", action="store_true",
                            help="on a resume with a new train.steps, stretch the LR schedule "
                                 "over it (default: keep the original schedule)")
    elif name == "eval":
        parser.add_argument("run_dir", help="a run directory written by `mixjax train`")
        parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
        parser.add_argument("--split", choices=("validation", "test"), default=None)
        parser.add_argument("--num-seqs", type=int, default=None,
                            help="eval sequences per domain (default: the run's eval.num_seqs)")
    else:  # pragma: no cover
        raise ValueError(f"mixjax.train.cli does not handle {name!r}")


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        # Multi-host (MIXJAX_DISTRIBUTED=1, set by scripts/launch_*.sh): join the job before
        # any other JAX call; a no-op otherwise.
        from mixjax.parallel import distributed
        distributed.initialize()
    from mixjax.train import loop
    if args.command == "train":
        from mixjax import config as config_lib
        from mixjax.train import checks
        cfg = config_lib.load(args.config, args.overrides)
        if getattr(args, "out", None):   # a path, never parsed as a literal
            cfg.train.run_dir = str(args.out)
            config_lib.validate(cfg)
        given = tuple(getattr(args, "plugin", None) or ())
        if given:                        # recorded: eval/export of the run import them again
            cfg.train.plugins = tuple(dict.fromkeys(tuple(cfg.train.plugins) + given))
        checks.check_names(cfg)          # registered names: exit 2 before anything is built
        result = loop.train(cfg, resume=args.resume, resume_from=args.resume_from,
                            rebuild_schedule=args.rebuild_schedule)
        if result.final_eval is not None:
            print(loop.format_eval(result.final_eval, _domains(result.run_dir)))
        if result.interrupted:
            print(f"stopped by signal {result.signal} after {result.steps_done} steps; "
                  f"checkpoint saved in {result.run_dir}/checkpoints (resume with --resume)",
                  file=sys.stderr)
            return 128 + int(result.signal)
        print(f"done: {result.steps_done} steps, run dir {result.run_dir}")
        return 0
    from mixjax import plugins
    plugins.load_for_run(args.run_dir, log=lambda line: print(line, file=sys.stderr))
    result = loop.evaluate_run(args.run_dir, step=args.step, split=args.split,
                               num_seqs=args.num_seqs)
    domains = _domains(pathlib.Path(args.run_dir))
    print(f"step {result['step']}, split {result['split']}")
    print(loop.format_eval(result, domains))
    out = pathlib.Path(args.run_dir) / f"eval_step{result['step']}_{result['split']}.json"
    from mixjax import atomic
    atomic.write_text(out, json.dumps(result, indent=2) + "\n")
    return 0


def _domains(run_dir: pathlib.Path) -> tuple[str, ...]:
    info = json.loads((pathlib.Path(run_dir) / "run_info.json").read_text())
    return tuple(info["domains"])
