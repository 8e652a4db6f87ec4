"""The ``mixjax`` command: thin; parses and hands over to the room that does the work.

Each command group lives in the module that owns it and exposes
``add_arguments(parser)`` and ``run(args) -> int``:

    mixjax train CONFIG [--set key=value ...]   mixjax.train.cli
    mixjax eval RUN_DIR                         mixjax.train.cli
    mixjax data {build,info} ...                mixjax.data.cli
    mixjax mix {doremi,doge} CONFIG ...         mixjax.workflows
    mixjax dg {sweep,table} ...                 mixjax.dg.cli
    mixjax search {regmix,law} CONFIG ...       mixjax.search.pipeline
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, help). Modules are imported only when their command runs,
# so `mixjax data info` does not pay for importing JAX models.
COMMANDS = {
    "train": ("mixjax.train.cli", "train a model from a config"),
    "eval": ("mixjax.train.cli", "evaluate a run directory's latest checkpoint"),
    "data": ("mixjax.data.cli", "build or describe corpora"),
    "mix": ("mixjax.workflows", "multi-run mixture searches (DoReMi, DoGE)"),
    "dg": ("mixjax.dg.cli", "domain-generalisation sweeps and tables"),
    "search": ("mixjax.search.pipeline", "offline mixture search: proxy swarm -> fit -> search"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mixjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p, name)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
