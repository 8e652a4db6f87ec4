"""Domain sources: random-access collections of documents, one per domain.

A :class:`DomainSource` has ``len(source)`` and ``source[i]`` returning a
document: a ``str`` (to be tokenized) or an integer array (already tokenized;
the pipeline passes it through). Sources are picklable (file handles are
opened lazily per process) so grain worker processes can read them.

Kinds:

* :class:`JsonlSource` — one JSON object per line, text under ``text_field``.
  The file is scanned once at construction: byte offsets of the usable lines
  are kept, and bad lines (not UTF-8, not JSON, no string ``text_field``,
  shorter than ``min_chars``) either raise an error naming file and line
  (``on_error="raise"``, default) or are skipped and counted
  (``on_error="skip"``; see ``source.skipped``).
* :class:`TextDirSource` — every file matching ``pattern`` under a directory
  (recursively, sorted) is one document.
* :class:`ArrayRecordSource` — ArrayRecord files whose records are UTF-8 text,
  JSON objects or raw int32 token arrays (``record_format``).
* :class:`TfdsSource` — ``tfds.data_source(name, split=...)`` (random access,
  no TensorFlow needed), text under ``text_field``.
* :class:`~mixjax.data.hf_sources.HFSource` — a Hugging Face ``datasets`` dataset
  read from local files (in :mod:`mixjax.data.hf_sources`).
* :class:`ListSource` — an in-memory list (tests, small experiments).

A domain with zero usable documents is an error naming the domain.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

_JSON_DECODE = json.JSONDecoder().decode

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """Bad input data: names the domain, file and line/record at fault."""


class DomainSource:
    """Random-access documents of one domain (see the module docstring)."""

    domain: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> str | np.ndarray:
        raise NotImplementedError

    def group_keys(self) -> np.ndarray | None:
        """uint64[len] keys of documents that must share a split, or None.

        Parts cut from one long document (ids ``doc#0``, ``doc#1``, ...) share a
        key, so splits never leak a document's text between train and test.
        """
        return None

    def fingerprint(self) -> dict | None:
        """What identifies this source's contents (files, sizes, mtimes, options), or None.

        Caches of tokenized data (mixjax.data.token_cache) are keyed by it; None
        means "do not cache".
        """
        return None

    def describe(self) -> str:
        return f"{type(self).__name__}(domain={self.domain!r}, docs={len(self)})"

    def __repr__(self) -> str:
        return self.describe()


def file_stats(paths: Sequence[str]) -> list[list]:
    """``[[abs path, size, mtime_ns], ...]``: what a file-backed fingerprint holds."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return out


def _check_on_error(on_error: str, domain: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"domain {domain!r}: on_error must be one of {ON_ERROR}, got {on_error!r}")


def _require_docs(n: int, domain: str, where: str, skipped: int = 0) -> None:
    if n == 0:
        extra = f" ({skipped} lines/records skipped as bad input)" if skipped else ""
        raise DataError(f"domain {domain!r}: zero documents after filtering in {where}{extra}")


class ListSource(DomainSource):
    """Documents held in memory."""

    def __init__(self, docs: Sequence[str | np.ndarray], domain: str = ""):
        self.domain = domain
        self.docs = list(docs)
        _require_docs(len(self.docs), domain, "an in-memory list")

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, index):
        return self.docs[index]


def group_hash(doc_id: Any, fallback: str) -> int:
    """64-bit hash of a document id without its ``#<k>`` part suffix.

    A document without an id is its own group (``fallback`` must be unique).
    """
    base = "\0" + fallback if doc_id is None else str(doc_id)
    head, sep, tail = base.rpartition("#")
    if sep and tail.isdigit():
        base = head
    return int.from_bytes(hashlib.blake2b(base.encode("utf-8"), digest_size=8).digest(), "little")


class JsonlSource(DomainSource):
    """One document per JSONL line (see the module docstring).

    Args:
      paths: one file or a list of files (documents in file order).
      domain: the domain name (used in error messages).
      text_field: key of the document text in each JSON object.
      on_error: ``"raise"`` or ``"skip"`` bad lines.
      min_chars: lines whose text is shorter are filtered out (not errors).
      group_field: optional key of a document id; documents whose ids differ
        only by a ``#<k>`` part suffix share a split (see ``group_keys``).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, domain: str = "",
                 text_field: str = "text", on_error: str = "raise", min_chars: int = 1,
                 group_field: str | None = None):
        _check_on_error(on_error, domain)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [str(p) for p in paths]
        self.domain = domain or pathlib.Path(self.paths[0]).stem
        self.text_field, self.on_error, self.min_chars = text_field, on_error, int(min_chars)
        self.group_field = group_field
        groups: list[int] = []
        self.skipped: list[tuple[str, int, str]] = []   # (file, line number, reason)
        self.filtered = 0                               # lines dropped by min_chars
        files, offsets, lengths = [], [], []
        for f, path in enumerate(self.paths):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"domain {self.domain!r}: JSONL file {path!r} not found")
            for off, length, group in self._scan(path):
                files.append(f)
                offsets.append(off)
                lengths.append(length)
                groups.append(group)
        self._file = np.asarray(files, np.int32)
        self._offset = np.asarray(offsets, np.int64)
        self._length = np.asarray(lengths, np.int64)
        self._groups = np.asarray(groups, np.uint64) if group_field else None
        self._fds: dict[int, int] = {}
        _require_docs(len(self._offset), self.domain, ", ".join(self.paths), len(self.skipped))

    def _scan(self, path: str):
        with open(path, "rb") as fh:
            off = 0
            for lineno, raw in enumerate(fh, start=1):
                start, off = off, off + len(raw)
                if not raw.strip():
                    continue
                try:
                    text, group = self._parse(raw, f"{path}:{lineno}")
                except ValueError as e:
                    msg = f"domain {self.domain!r}: {path}:{lineno}: {e}"
                    if self.on_error == "raise":
                        raise DataError(msg + " (pass on_error='skip' to skip bad lines)") from None
                    self.skipped.append((path, lineno, str(e)))
                    continue
                if len(text) < self.min_chars:
                    self.filtered += 1
                    continue
                yield start, len(raw), group

    def _parse(self, raw: bytes, where: str) -> tuple[str, int]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        if self.text_field not in obj:
            raise ValueError(f"no field {self.text_field!r} (keys: {sorted(obj)[:8]})")
        text = obj[self.text_field]
        if not isinstance(text, str):
            raise ValueError(f"field {self.text_field!r} is {type(text).__name__}, not a string")
        return text, (group_hash(obj.get(self.group_field), where) if self.group_field else 0)

    def group_keys(self):
        return self._groups

    def fingerprint(self):
        return {"kind": "jsonl", "files": file_stats(self.paths), "text_field": self.text_field,
                "on_error": self.on_error, "min_chars": self.min_chars,
                "group_field": self.group_field, "docs": len(self)}

    def __len__(self):
        return len(self._offset)

    def __getitem__(self, index):
        return self.record(index)[self.text_field]

    def record(self, index: int) -> dict:
        """The whole JSON object of document ``index`` (its text under ``text_field``)."""
        index = int(index)
        f = int(self._file[index])
        fd = self._fds.get(f)
        if fd is None:
            fd = self._fds[f] = os.open(self.paths[f], os.O_RDONLY)
        raw = os.pread(fd, int(self._length[index]), int(self._offset[index]))
        # the index kept only lines that _parse read this way (UTF-8, then JSON), so the
        # bytes' encoding needs no detection (json.loads(bytes)'s per-call cost)
        return _JSON_DECODE(raw.decode("utf-8"))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}   # descriptors are per process
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


class TextDirSource(DomainSource):
    """Every file matching ``pattern`` under ``path`` (recursive, sorted) is a document."""

    def __init__(self, path: str | os.PathLike, *, domain: str = "", pattern: str = "*.txt",
                 on_error: str = "raise", min_chars: int = 1):
        _check_on_error(on_error, domain)
        self.path = str(path)
        self.domain = domain or pathlib.Path(self.path).name
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"domain {self.domain!r}: text directory {self.path!r} not found")
        self.on_error, self.min_chars = on_error, int(min_chars)
        self.skipped: list[tuple[str, int, str]] = []
        self.filtered = 0
        files = sorted(p for p in glob.glob(os.path.join(self.path, "**", pattern), recursive=True)
                       if os.path.isfile(p))
        self.files = []
        for p in files:
            try:
                text = self._read(p)
            except UnicodeDecodeError as e:
                msg = f"domain {self.domain!r}: {p}: not valid UTF-8 ({e.reason} at byte {e.start})"
                if on_error == "raise":
                    raise DataError(msg + " (pass on_error='skip' to skip bad files)") from None
                self.skipped.append((p, 0, msg))
                continue
            if len(text) < self.min_chars:
                self.filtered += 1
                continue
            self.files.append(p)
        _require_docs(len(self.files), self.domain, f"{self.path}/**/{pattern}", len(self.skipped))

    @staticmethod
    def _read(path: str) -> str:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        return self._read(self.files[int(index)])


def text_dir_sources(root: str | os.PathLike, pattern: str = "*.txt", **kwargs) -> dict[str, TextDirSource]:
    """One :class:`TextDirSource` per sub-directory of ``root`` (sorted names)."""
    root = str(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data directory {root!r} not found")
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not subdirs:
        raise DataError(f"data directory {root!r} has no domain sub-directories")
    return {d: TextDirSource(os.path.join(root, d), domain=d, pattern=pattern, **kwargs) for d in subdirs}


RECORD_FORMATS = ("text", "json", "tokens")


class ArrayRecordSource(DomainSource):
    """ArrayRecord files; records are UTF-8 ``text``, ``json`` objects or int32 ``tokens``.

    With ``validate=True`` every record is decoded once at construction and bad
    ones raise (naming file and record) or are skipped; otherwise a bad record
    raises that error when read.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, domain: str = "",
                 record_format: str = "text", text_field: str = "text", on_error: str = "raise",
                 validate: bool = False):
        _check_on_error(on_error, domain)
        if record_format not in RECORD_FORMATS:
            raise ValueError(f"domain {domain!r}: record_format must be one of {RECORD_FORMATS}, "
                             f"got {record_format!r}")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [str(p) for p in paths]
        self.domain = domain or pathlib.Path(self.paths[0]).stem
        for p in self.paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"domain {self.domain!r}: ArrayRecord file {p!r} not found")
        self.record_format, self.text_field, self.on_error = record_format, text_field, on_error
        self.skipped: list[tuple[str, int, str]] = []
        self._ds = None
        n = len(self._source())
        self._index: np.ndarray | None = None
        if validate:
            keep = []
            for i in range(n):
                try:
                    self._decode(self._source()[i], i)
                    keep.append(i)
                except DataError as e:
                    if on_error == "raise":
                        raise
                    self.skipped.append((self._where(i), i, str(e)))
            self._index = np.asarray(keep, np.int64)
            n = len(keep)
        _require_docs(n, self.domain, ", ".join(self.paths), len(self.skipped))

    def _source(self):
        if self._ds is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource
            self._ds = ArrayRecordDataSource(self.paths)
        return self._ds

    def _where(self, i: int) -> str:
        return self.paths[0] if len(self.paths) == 1 else f"{', '.join(self.paths)} (global record)"

    def _decode(self, raw: bytes, i: int):
        if self.record_format == "tokens":
            if len(raw) % 4:
                raise DataError(f"domain {self.domain!r}: {self._where(i)} record {i}: "
                                f"{len(raw)} bytes is not a whole number of int32 tokens")
            return np.frombuffer(raw, dtype=np.int32)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"domain {self.domain!r}: {self._where(i)} record {i}: not valid UTF-8 "
                            f"({e.reason} at byte {e.start})") from None
        if self.record_format == "text":
            return text
        try:
            obj = json.loads(text)
            value = obj[self.text_field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"domain {self.domain!r}: {self._where(i)} record {i}: malformed JSON "
                            f"record or no field {self.text_field!r} ({e})") from None
        if not isinstance(value, str):
            raise DataError(f"domain {self.domain!r}: {self._where(i)} record {i}: field "
                            f"{self.text_field!r} is not a string")
        return value

    def __len__(self):
        return len(self._index) if self._index is not None else len(self._source())

    def __getitem__(self, index):
        i = int(self._index[index]) if self._index is not None else int(index)
        return self._decode(self._source()[i], i)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None   # reopened lazily in each process
        return state


class TfdsSource(DomainSource):
    """``tfds.data_source(name, split=split)``; the document is ``record[text_field]``.

    Byte strings are decoded as UTF-8; integer arrays count as tokens. Needs
    prepared ArrayRecord files (or ``tfds.testing.mock_data`` in tests): a run never
    downloads (``download=False``, unlike tfds' default), an unprepared dataset is
    an error that says how to prepare it (``tfds build NAME --file_format=array_record``).
    """

    def __init__(self, name: str, *, split: str = "train", domain: str = "", text_field: str = "text",
                 data_dir: str | None = None, download: bool = False):
        import tensorflow_datasets as tfds
        self.name, self.split, self.text_field, self.data_dir = name, split, text_field, data_dir
        self.domain = domain or f"{name}:{split}"
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except Exception as e:  # tfds raises many kinds; name the domain and dataset
            how = "" if download else (
                f"; datasets are not downloaded at run time: prepare it first with `tfds build "
                f"{name} --file_format=array_record"
                + (f" --data_dir={data_dir}" if data_dir else "") + "`")
            raise DataError(f"domain {self.domain!r}: cannot open tfds dataset {name!r} split "
                            f"{split!r}: {type(e).__name__}: {e}{how}") from e
        _require_docs(len(self._ds), self.domain, f"tfds {name!r} split {split!r}")
        first = self._ds[0]
        if not isinstance(first, dict) or text_field not in first:
            keys = sorted(first) if isinstance(first, dict) else type(first).__name__
            raise DataError(f"domain {self.domain!r}: tfds {name!r} records have no field "
                            f"{text_field!r} (fields: {keys})")

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, index):
        value = self._ds[int(index)][self.text_field]
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
            return value.reshape(-1).astype(np.int32)
        return str(value)


def as_domain_list(sources: Any) -> tuple[list[str], list[DomainSource]]:
    """Normalises ``{name: source}`` or a list of sources to (names, sources)."""
    if isinstance(sources, dict):
        names, srcs = list(sources), list(sources.values())
    else:
        srcs = list(sources)
        names = [s.domain for s in srcs]
    if not srcs:
        raise DataError("no domains given")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"duplicate domain names {dup}")
    return names, srcs
