"""What produced a run: code version, libraries, machine (written into ``run_info.json``).

``collect()`` returns::

    {"mixjax_version": "0.1.0",
     "git": {"commit": "<sha>", "dirty": false} | null,   # null outside a git checkout
     "python": "3.11.7", "platform": "Linux-...",
     "libraries": {"jax": ..., "jaxlib": ..., "flax": ..., "optax": ..., "orbax-checkpoint": ...,
                   "grain": ..., "numpy": ...},                # null where not installed
     "argv": [...]}

The git fields describe the checkout that holds the imported ``mixjax``
package (not the working directory); ``dirty`` is true when tracked files have
uncommitted changes.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import platform
import subprocess
import sys

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
             "tokenizers", "sentencepiece", "tiktoken", "datasets", "safetensors")


def version() -> str:
    from mixjax import __version__
    return __version__


def library_versions(names=LIBRARIES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: str | pathlib.Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (the mixjax package), or None."""
    path = pathlib.Path(path or pathlib.Path(__file__).parent)

    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):   # no git binary, or a hung filesystem
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def collect() -> dict:
    return {"mixjax_version": version(), "git": git_state(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": library_versions(),
            "argv": list(sys.argv)}
