"""The ``mixjax`` command: thin; parses and hands over to the room that does the work.

Each command group lives in the module that owns it and exposes
``add_arguments(parser)`` and ``run(args) -> int``:

    mixjax train CONFIG [--set key=value ...]   mixjax.train.cli
    mixjax eval RUN_DIR                         mixjax.train.cli
    mixjax data {build,info} ...                mixjax.data.cli
    mixjax mix {doremi,doge} CONFIG ...         mixjax.workflows
    mixjax dg {sweep,table} ...                 mixjax.dg.cli
    mixjax export RUN_DIR --format hf|safetensors   mixjax.models.hf_io
    mixjax --version                            (also: python -m mixjax)

Every command that writes a directory takes it as ``--out DIR`` (older
spellings stay as aliases: ``dg sweep --run-dir``).
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
    "export": ("mixjax.models.hf_io", "write a run's parameters as safetensors or an HF Llama dir"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mixjax", description=__doc__.splitlines()[0])
    from mixjax import __version__
    parser.add_argument("--version", action="version", version=f"mixjax {__version__}")
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
