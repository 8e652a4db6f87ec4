"""Extractors for sources shipped as Debian ``.deb`` packages.

Each extractor takes the source's archive paths (in catalogue order) and yields
``(local_id, text)`` in a deterministic order. Text is normalised later, by the builder.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from mixjax.data.corpus.fetch import FetchError, deb_data_tar, tar_files, which

_TEST_DIRS = re.compile(r"/(test|tests|idle_test)/")


def decode(raw: bytes) -> str:
    """UTF-8, falling back to latin-1 (a few old files are not UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def python_stdlib(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """``usr/lib/python3.11/**/*.py`` minus test packages (libpython3.11-minimal, -stdlib)."""
    for path in paths:
        for name, raw in tar_files(deb_data_tar(path), r"^usr/lib/python3\.\d+/.*\.py$"):
            if not _TEST_DIRS.search(name):
                yield name.split("/", 3)[3], decode(raw)


def c_headers(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """``usr/include/**/*.h`` (libc6-dev, linux-libc-dev)."""
    for path in paths:
        for name, raw in tar_files(deb_data_tar(path), r"^usr/include/.*\.h$"):
            yield name[len("usr/include/"):], decode(raw)


def python_docs(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """reStructuredText sources of the Python docs (python3.11-doc)."""
    for path in paths:
        for name, raw in tar_files(deb_data_tar(path), r"/html/_sources/.*\.rst\.txt$"):
            yield name.split("/_sources/", 1)[1], decode(raw)


def _render_man(raw_gz: bytes, groff: str) -> str:
    # -P-cbou: grotty without SGR escapes, overstriking bold or underline -> plain text.
    # A minimal environment (no GROFF_* or locale variables) keeps the rendering reproducible.
    src = zlib.decompress(raw_gz, 16 + zlib.MAX_WBITS)
    proc = subprocess.run([groff, "-man", "-Tutf8", "-P-cbou"], input=src, capture_output=True,
                          env={"LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=120)
    return proc.stdout.decode("utf-8", "replace")


def man_pages(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Linux man pages rendered to plain text with groff (manpages, manpages-dev).

    ``.so`` redirect stubs and symlinks are skipped (rendered text under 1,000 chars)."""
    groff = which("groff")
    if groff is None:
        raise FetchError("man pages need `groff` (Debian package groff-base) to render; it is not installed")
    pages = []
    for path in paths:
        pages += list(tar_files(deb_data_tar(path), r"^usr/share/man/man[1-8]/[^/]+\.gz$"))
    with ThreadPoolExecutor(max_workers=2) as pool:  # groff is the slow part of every cold build
        rendered = list(pool.map(lambda p: _render_man(p[1], groff), pages))
    for (name, _), text in zip(pages, rendered):
        if len(text) >= 1000:
            yield name[len("usr/share/man/"):-3], text


_MM_PROOF = re.compile(r"\$=.*?\$\.", re.S)
_MM_STATEMENT = re.compile(r"(\S+)\s+\$([pa])\s+(.*?)\s+\$\.", re.S)


def metamath(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """set.mm theorems/axioms: the English comment + the formal statement, proofs dropped.

    A comment is paired with the first labelled ``$p``/``$a`` after it, unless another
    comment intervenes (section headers are thereby skipped). Comments are split off
    first, so proof deletion never touches a ``$=`` quoted inside a comment."""
    (_, raw), = tar_files(deb_data_tar(paths[0]), r"/set\.mm$")
    pieces = re.split(r"\$\((.*?)\$\)", raw.decode("utf-8", "replace"), flags=re.S)
    # pieces alternate: code, comment, code, comment, ..., code
    for i in range(1, len(pieces) - 1, 2):
        words = " ".join(pieces[i].split())
        m = _MM_STATEMENT.search(_MM_PROOF.sub("$.", pieces[i + 1]))
        if words and m:
            label, kind, stmt = m.group(1), m.group(2), " ".join(m.group(3).split())
            yield label, f"{words}\n{label} ${kind} {stmt} $."


def fortunes(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """fortune cookies: entries separated by a line holding only ``%`` (``.dat``/``.u8`` skipped)."""
    for name, raw in tar_files(deb_data_tar(paths[0]), r"^usr/share/games/fortunes/[^/.]+$"):
        topic = name.rsplit("/", 1)[1]
        for i, entry in enumerate(re.split(r"(?m)^%\n", decode(raw))):
            if entry.strip():
                yield f"{topic}/{i}", entry


def rdb_char_vectors(blob: bytes) -> Iterator[list[str]]:
    """Character vectors in an R lazy-load database (``.rdb``): records of a 4-byte big-endian
    length + a zlib stream holding R XDR serialisation (``X\\n``, 3 version ints, [format-3
    encoding name], SEXP header, length, then per element CHARSXP header, byte length, bytes)."""
    pos = 0
    while pos < len(blob):
        dec = zlib.decompressobj()
        data = dec.decompress(blob[pos + 4:])
        pos = len(blob) - len(dec.unused_data)
        off = 14
        if struct.unpack(">i", data[2:6])[0] == 3:
            off += 4 + struct.unpack(">i", data[off:off + 4])[0]
        head, count = struct.unpack(">ii", data[off:off + 8])
        off += 8
        if head & 0xFF != 16:  # not a character vector (STRSXP)
            continue
        out = []
        for _ in range(count):
            n = struct.unpack(">ii", data[off:off + 8])[1]
            off += 8
            out.append(data[off:off + n].decode("utf-8", "replace") if n >= 0 else "")
            off += max(n, 0)
        yield out


def austen(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Jane Austen's six novels (r-cran-janeaustenr), one doc per chapter."""
    (_, raw), = tar_files(deb_data_tar(paths[0]), r"/janeaustenr/data/Rdata\.rdb$")
    for lines in rdb_char_vectors(raw):
        if len(lines) < 1000:  # the six novels; skip any small helper vectors
            continue
        title = lines[0].strip()
        chapters, current = [], []
        for line in lines[1:]:
            if re.match(r"^\s*(CHAPTER|Chapter)\s+\w+", line) and current:
                chapters.append(current)
                current = []
            current.append(line)
        chapters.append(current)
        slug = re.sub(r"\W+", "_", title.lower()).strip("_")
        for i, chap in enumerate(chapters):
            body = "\n".join(chap).strip()
            if body:
                yield f"{slug}/{i:03d}", f"{title}\n\n{body}"
