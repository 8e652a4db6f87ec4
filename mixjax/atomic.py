"""Crash-consistent file rewrites: write a temporary file, fsync it, rename it over.

A reader (or a resumed run) sees either the old file or the new one, never a
half-written one: ``os.replace`` is atomic on POSIX file systems, and the fsync
of the file (before) and of its directory (after) make the new contents and the
rename durable across a power loss, not only across a killed process.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replaces ``path`` with ``data``."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replaces ``path`` with ``text`` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
