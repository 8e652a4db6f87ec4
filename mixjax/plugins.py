"""Out-of-tree extensions (mixers, Methods, statistics) loaded by the ``mixjax`` command.

Two routes, both before the command runs (docs/extending.md, "Out of tree"):

* installed packages that declare an entry point in the group ``mixjax.plugins``
  (``pyproject.toml``: ``[project.entry-points."mixjax.plugins"] mine = "my_pkg.mixers"``)
  are imported at every CLI start; an entry point that names a callable is called once
  after its import;
* ``--plugin MODULE`` (any command, repeatable) imports MODULE. ``mixjax train`` records
  the modules in the run's ``train.plugins`` (and ``run_info.json``), so ``mixjax eval`` /
  ``mixjax export`` of that run import them again without being told.

Importing a module is all it takes: its ``@mixing.register`` / ``@methods.register`` /
``statistics.declare`` run at import. A leaf module: it imports nothing of mixjax.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from typing import Iterable

from mixjax.errors import ConfigError

ENTRY_POINT_GROUP = "mixjax.plugins"

_loaded: dict[str, str] = {}      # module (or entry point value) -> how: "entry point" | "--plugin"


class PluginError(ConfigError):
    """A plugin could not be imported (message names it); exit code 2."""


def load_entry_points() -> list[str]:
    """Imports every ``mixjax.plugins`` entry point (once); returns their values."""
    done = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module in _loaded:
            continue
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type(sys)):
                obj()
        except Exception as e:
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}, group "
                              f"{ENTRY_POINT_GROUP!r}) failed to load: {type(e).__name__}: "
                              f"{e}") from e
        _loaded[ep.module] = "entry point"
        done.append(ep.module)
    return done


def load(modules: Iterable[str], *, where: str = "--plugin") -> list[str]:
    """Imports each module (once); PluginError naming ``where`` and the module otherwise."""
    done = []
    for name in modules:
        name = str(name).strip()
        if not name:
            continue
        if name not in _loaded or name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception as e:
                raise PluginError(f"{where} {name!r} cannot be imported: {type(e).__name__}: "
                                  f"{e}") from e
            _loaded.setdefault(name, where)
        done.append(name)
    return done


def loaded() -> list[str]:
    """The plugins imported so far (entry points and ``--plugin`` modules), in order."""
    return list(_loaded)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(argv without --plugin options, the plugin modules)``: ``--plugin M`` and
    ``--plugin=M`` anywhere on the command line, so every command takes them."""
    rest, mods, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--plugin":
            if i + 1 >= len(argv):
                raise PluginError("--plugin needs a module name")
            mods.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--plugin="):
            mods.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest, mods


def load_for_run(run_dir, log=None) -> list[str]:
    """Imports the plugins a run recorded (``train.plugins`` in its config.json, ``plugins``
    in run_info.json). One that is not importable here is reported through ``log`` and
    skipped: a stored run's config loads without it (its parameters do not need it)."""
    import json
    import pathlib
    run_dir = pathlib.Path(run_dir)
    names: list[str] = []
    for file, get in (("config.json", lambda d: (d.get("train") or {}).get("plugins") or []),
                      ("run_info.json", lambda d: d.get("plugins") or [])):
        path = run_dir / file
        if path.is_file():
            try:
                names += [n for n in get(json.loads(path.read_text())) if n not in names]
            except (ValueError, AttributeError):
                pass
    done = []
    for name in names:
        try:
            done += load([name], where=f"plugin recorded by {run_dir}:")
        except PluginError as e:
            if log is not None:
                log(f"note: {e}")
    return done
