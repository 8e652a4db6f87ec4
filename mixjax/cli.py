"""The ``mixjax`` command: thin; parses and hands over to the room that does the work.

Each command group lives in the module that owns it and exposes
``add_arguments(parser)`` and ``run(args) -> int``:

    mixjax train CONFIG [--set key=value ...]   mixjax.train.cli
    mixjax eval RUN_DIR                         mixjax.train.cli
    mixjax data {build,info,select,regroup} ... mixjax.data.cli
    mixjax mix {doremi,doge} CONFIG ...         mixjax.workflows
    mixjax dg {sweep,table} ...                 mixjax.dg.cli
    mixjax compare CONFIG... --seeds N          mixjax.compare.cli
    mixjax export RUN_DIR --format hf|safetensors   mixjax.train.export
    mixjax demix RUN_DIR --add D (--from E | --closest-on F) | --remove D   mixjax.train.demix_cli
    mixjax --version                            (also: python -m mixjax)
    mixjax search {regmix,law,dcpt,sft,skillit-graph} CONFIG ...  mixjax.search.command

Every command that writes a directory takes it as ``--out DIR`` (older
spellings stay as aliases: ``dg sweep --run-dir``). Every command takes ``--plugin MODULE``
(repeatable): out-of-tree mixers and Methods (:mod:`mixjax.plugins`; installed
``mixjax.plugins`` entry points are imported at every start).

Errors in what the user gave (config, data, run dir, checkpoints, a run that
diverged) print one ``error: ...`` line and exit with status 2; ``--debug``
(anywhere on the command line) or ``MIXJAX_DEBUG=1`` shows the traceback. A job stopped by
SIGTERM/SIGINT checkpoints and exits with 128 + the signal's number; the same command resumes it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module, help). Modules are imported only when their command runs,
# so `mixjax data info` does not pay for importing JAX models.
COMMANDS = {
    "train": ("mixjax.train.cli", "train a model from a config"),
    "eval": ("mixjax.train.cli", "evaluate a run directory's latest checkpoint"),
    "data": ("mixjax.data.cli", "build or describe corpora"),
    "mix": ("mixjax.workflows", "multi-run mixture searches (DoReMi, DoGE)"),
    "dg": ("mixjax.dg.cli", "domain-generalisation sweeps and tables"),
    "compare": ("mixjax.compare.cli", "several methods x seeds on one budget: table with intervals"),
    "export": ("mixjax.train.export", "write a run's parameters as safetensors or an HF Llama dir"),
    "demix": ("mixjax.train.demix_cli", "add or remove a domain expert of a DEMix run"),
    "search": ("mixjax.search.command", "offline mixture search: proxy swarm -> fit -> search"),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that report a problem with the user's input, not a bug in mixjax."""
    from mixjax.config import ConfigError
    from mixjax.data.sources import DataError
    from mixjax.mixing.base import NonFiniteStatsError
    from mixjax.train.checkpoint import CheckpointError
    from mixjax.train.loop import RunDirError
    from mixjax.train.metrics import LogFileError
    # KeyError: unknown names (corpus, mixer, tokenizer, objective) raise it with a
    # message listing the known ones; FileNotFoundError/FileExistsError: paths given.
    return (ConfigError, DataError, NonFiniteStatsError, CheckpointError, RunDirError,
            LogFileError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
            SyntaxError, UnicodeDecodeError)


def error_line(e: BaseException) -> str:
    """``error: <message>`` on one line (a KeyError's message without its quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) \
        else str(e)
    if isinstance(e, SyntaxError) and e.filename:
        msg = f"{e.filename}:{e.lineno}: syntax error: {e.msg}"
    msg = " ".join((msg or type(e).__name__).split())
    return f"error: {msg}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MIXJAX_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    from mixjax import plugins
    try:   # out-of-tree extensions, before any command module is imported
        argv, plugin_modules = plugins.split_argv(argv)
        plugins.load_entry_points()
        plugins.load(plugin_modules)
    except plugins.PluginError as e:
        if debug:
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="mixjax", description=__doc__.splitlines()[0])
    from mixjax import __version__
    parser.add_argument("--version", action="version", version=f"mixjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p, name)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also MIXJAX_DEBUG=1)")
    parser.add_argument("--plugin", metavar="MODULE", action="append", default=[],
                        help="import MODULE first (out-of-tree mixers, Methods; repeatable, "
                             "with any command; installed `mixjax.plugins` entry points are "
                             "always imported)")
    args = parser.parse_args(argv)
    args.plugin = plugin_modules
    module = importlib.import_module(COMMANDS[args.command][0])
    from mixjax.run.signals import Interrupted
    try:
        return int(module.run(args) or 0)
    except Interrupted as e:    # checkpointed; the same command resumes (exit 128 + signal)
        print(str(e), file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if debug or not isinstance(e, user_error_types()):
            raise
        print(error_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
