"""Pre-tokenised token store: each domain's documents tokenised once, read as array slices.

Without a store the sampler reads every training document from its source on every
visit (for a JSONL corpus: ``pread`` + JSON decode + tokenisation + framing, ~9-40 us a
document; at 64 x 1024 ~100 documents a batch). With ``data.token_store=true`` each
domain's *base* source (the file-backed source under its split / selection views) is
tokenised once into

    tokens.bin    the framed documents ``BOS t(d_0) EOS BOS t(d_1) EOS ...``, concatenated
                  (uint16, or int32 for a vocabulary over 2^16 ids), read through a memory map
    offsets.npy   int64[N + 1]: document i framed is tokens[offsets[i]:offsets[i + 1]]
    meta.json     format version, key, dtype, sizes and the blake2b digest of both files

under ``<cache_dir>/token_store/<key>/`` with

    key = sha256("token_store", format version, tokenizer.checksum(), source.fingerprint())

(the keying of :mod:`mixjax.data.token_cache`). The store holds every document of the
base source, so one store serves each split, split seed and selection of it: a split or
selection is an index array into the store (:func:`base_and_index`), computed as without
a store. A file-backed fingerprint holds each file's path, size and modification time, so
an edited source misses the store and gets a new one. A source without a fingerprint
(in-memory lists, tfds) gets a store in memory, built when the sampler is built, and so
does every source when ``data.cache_dir=""``.

A store is written into a temporary directory and renamed into place (a concurrent
builder's complete store wins, never a partial one). Opening one checks the sizes, the
offsets and the digest; a truncated or corrupt store is reported on one line to stderr
and rebuilt.

Serving (:func:`stored_iterator`): chunk ``j`` of domain ``d`` is the same documents as
:class:`~mixjax.data.shuffling.ShuffledDocChunks` element ``j`` (same shuffle), each one
slice of the store (``[BOS] doc EOS``, or ``doc EOS`` without ``bos``: the framing of
:class:`~mixjax.data.packing.TokenizeChunk`, stored), and packed into sequences of ``S + 1`` tokens as
:class:`~mixjax.data.packing._PackIterator` packs them, many chunks per read
(:class:`StoredPacker`). Its state is the packer's over grain's
(``{"parent": {"next_index": j}, "skip": s}``), so the sampler's state is the same dict
with and without a store, and a state saved by one resumes in the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from mixjax.data import token_cache
from mixjax.data.packing import tokenize
from mixjax.data.shuffling import ShuffledDocChunks
from mixjax.data.sources import DataError, DomainSource
from mixjax.data.splits import IndexedView

VERSION = 1
SUBDIR = "token_store"
_FLUSH_TOKENS = 1 << 20          # tokens buffered between writes while building
_READ_TOKENS = 1 << 15           # tokens a read frames at least (fewer, larger reads)
_OPEN: dict[str, "TokenStore"] = {}   # key -> store opened (and verified) in this process


class StoreError(DataError):
    """A token store on disk that cannot be used (truncated, corrupt, another format)."""


def store_key(tokenizer, source: DomainSource) -> str | None:
    """The key of ``source``'s store, or None when the source has no fingerprint."""
    fp = source.fingerprint() if hasattr(source, "fingerprint") else None
    if fp is None:
        return None
    blob = json.dumps({"what": "token_store", "version": VERSION, "tokenizer": tokenizer.checksum(),
                       "source": fp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)


def base_and_index(view: DomainSource) -> tuple[DomainSource, np.ndarray]:
    """``(base, idx)``: document ``i`` of ``view`` is ``base[idx[i]]`` (splits and selections
    are :class:`~mixjax.data.splits.IndexedView` chains over one base source)."""
    idx = np.arange(len(view), dtype=np.int64)
    src = view
    while isinstance(src, IndexedView):
        idx = src.indices[idx]
        src = src.source
    return src, idx


class TokenStore:
    """The tokens of one base source: ``doc(i)`` and framed chunks of documents."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, path: pathlib.Path | None = None):
        self.tokens = np.asarray(tokens)          # a plain view of the memory map (faster slices)
        self.offsets = np.asarray(offsets, np.int64)
        self.path = path

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        """int32 tokens of document ``i`` (what ``tokenize(source[i])`` gives)."""
        return self.tokens[self.offsets[i] + 1:self.offsets[i + 1] - 1].astype(np.int32)

    def spans(self, ids: np.ndarray, bos: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``: documents ``ids`` framed ``[BOS] t EOS`` are ``tokens[lo:hi]``."""
        return self.offsets[ids] + (0 if bos else 1), self.offsets[ids + 1]

    def gather(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """int32: ``tokens[lo[0]:hi[0]]``, ``tokens[lo[1]:hi[1]]``, ... joined."""
        tok = self.tokens
        return np.concatenate([tok[a:b] for a, b in zip(lo.tolist(), hi.tolist())], dtype=np.int32)


# -- building ---------------------------------------------------------------------------------
def _framed_doc(source: DomainSource, i: int, tokenizer) -> np.ndarray:
    """``BOS t(source[i]) EOS`` as int64 (the store's dtype is checked when it is written)."""
    doc = source[i]
    if tokenizer.name == "byte" and isinstance(doc, str):
        t = np.frombuffer(doc.encode("utf-8"), np.uint8)   # the byte tokenizer's ids
    else:
        t = tokenize(doc, tokenizer)
    out = np.empty(len(t) + 2, np.int64)
    out[0], out[1:-1], out[-1] = tokenizer.bos_id, t, tokenizer.eos_id
    return out


def _check_range(parts: list[np.ndarray], first: int, dtype: np.dtype, tokenizer, domain: str) -> None:
    info = np.iinfo(dtype)
    for k, a in enumerate(parts):
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise DataError(f"domain {domain!r}: document {first + k} has a token id outside "
                            f"[{info.min}, {info.max}] (tokenizer vocabulary "
                            f"{tokenizer.vocab_size}); it cannot go in a token store")


def _tokenise_into(fh, source: DomainSource, tokenizer, dtype: np.dtype, domain: str) -> np.ndarray:
    """Writes every document's tokens (``dtype``) to ``fh`` in blocks; returns the offsets."""
    n = len(source)
    offsets = np.zeros(n + 1, np.int64)
    buf, have, first = [], 0, 0
    for i in range(n):
        t = _framed_doc(source, i, tokenizer)
        offsets[i + 1] = offsets[i] + len(t)
        buf.append(t)
        have += len(t)
        if have >= _FLUSH_TOKENS or i == n - 1:
            _check_range(buf, first, dtype, tokenizer, domain)
            fh.write(np.concatenate(buf).astype(dtype, copy=False).tobytes())
            buf, have, first = [], 0, i + 1
    return offsets


def _build_memory(source: DomainSource, tokenizer, domain: str) -> TokenStore:
    dtype = token_dtype(tokenizer)
    parts = [_framed_doc(source, i, tokenizer) for i in range(len(source))]
    _check_range(parts, 0, dtype, tokenizer, domain)
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    joined = np.concatenate(parts) if parts else np.empty(0, dtype)
    return TokenStore(joined.astype(dtype), offsets)


def _digest(tokens: np.ndarray, offsets: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(memoryview(np.ascontiguousarray(tokens)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(offsets)).cast("B"))
    return h.hexdigest()


def build(root: pathlib.Path, key: str, source: DomainSource, tokenizer, domain: str) -> pathlib.Path:
    """Tokenises ``source`` into ``root/<key>/`` (atomically: a temporary directory renamed)."""
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root, prefix=f".{key[:16]}-"))
    try:
        dtype = token_dtype(tokenizer)
        with open(tmp / "tokens.bin", "wb") as fh:
            offsets = _tokenise_into(fh, source, tokenizer, dtype, domain)
        np.save(tmp / "offsets.npy", offsets)
        tokens = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="r") if offsets[-1] else \
            np.empty(0, dtype)
        meta = {"version": VERSION, "key": key, "dtype": dtype.str, "num_docs": len(offsets) - 1,
                "num_tokens": int(offsets[-1]), "digest": _digest(tokens, offsets),
                "domain": domain, "tokenizer": tokenizer.describe(), "source": source.describe()}
        del tokens
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, final)
        except OSError:          # another process renamed its complete store first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load(path: pathlib.Path, key: str, num_docs: int) -> TokenStore:
    """The verified store at ``path``; :class:`StoreError` names what is wrong."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"meta.json unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION or meta.get("key") != key:
        got = meta if not isinstance(meta, dict) else (meta.get("version"), meta.get("key"))
        raise StoreError(f"meta.json holds {got!r}, expected format version {VERSION} and key {key!r}")
    try:
        dtype, n_tok, n_docs = np.dtype(meta["dtype"]), int(meta["num_tokens"]), int(meta["num_docs"])
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"meta.json lacks a valid dtype / num_tokens / num_docs ({e!r})") from None
    if n_docs != num_docs:
        raise StoreError(f"holds {n_docs} documents, the source has {num_docs}")
    size = (path / "tokens.bin").stat().st_size if (path / "tokens.bin").exists() else -1
    if size != n_tok * dtype.itemsize:
        raise StoreError(f"tokens.bin is {size} bytes, expected {n_tok * dtype.itemsize} "
                         f"({n_tok} tokens of {dtype})")
    try:
        offsets = np.load(path / "offsets.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise StoreError(f"offsets.npy unreadable ({e})") from None
    if offsets.shape != (n_docs + 1,) or offsets.dtype != np.int64 or offsets[0] != 0 \
            or offsets[-1] != n_tok or np.any(np.diff(offsets) < 2):
        raise StoreError(f"offsets.npy is not int64[{n_docs + 1}] rising from 0 to {n_tok} "
                         f"by >= 2 (BOS, EOS) a document")
    tokens = np.memmap(path / "tokens.bin", dtype=dtype, mode="r") if n_tok else np.empty(0, dtype)
    if _digest(tokens, offsets) != meta.get("digest"):
        raise StoreError("contents do not match the digest in meta.json")
    return TokenStore(tokens, offsets, path)


def open_store(source: DomainSource, tokenizer, cache_dir: str | None, domain: str) -> TokenStore:
    """The store of base source ``source``: opened from ``cache_dir``, built there when
    missing, rebuilt (one line on stderr) when unusable; in memory without a key."""
    root = token_cache.resolve_dir(cache_dir)
    key = store_key(tokenizer, source)
    if root is None or key is None:
        return _build_memory(source, tokenizer, domain)
    if key in _OPEN:
        return _OPEN[key]
    path = root / SUBDIR / key
    if path.exists():
        try:
            store = _OPEN[key] = load(path, key, len(source))
            return store
        except StoreError as e:
            print(f"[mixjax data] domain {domain!r}: token store {path} is unusable ({e}); "
                  f"rebuilding it", file=sys.stderr, flush=True)
            aside = path.with_name(f".{key[:16]}-bad-{os.getpid()}")
            try:
                os.rename(path, aside)
                shutil.rmtree(aside, ignore_errors=True)
            except FileNotFoundError:   # another process moved it first
                pass
    try:
        build(path.parent, key, source, tokenizer, domain)
    except OSError as e:
        raise DataError(f"domain {domain!r}: cannot write its token store under {path.parent} "
                        f"({type(e).__name__}: {e.strerror or e}); set data.cache_dir to a "
                        f"writable directory, or to \"\" for a store in memory") from None
    store = _OPEN[key] = load(path, key, len(source))
    return store


# -- serving ----------------------------------------------------------------------------------
class StoredPacker:
    """Packed int32[length] sequences of one domain, read from its store many chunks at a time.

    The stream is that of grain's pipeline (:class:`ShuffledDocChunks` chunks, framed and
    packed by :class:`~mixjax.data.packing._PackIterator`), and so is the state:
    ``{"parent": {"next_index": j}, "skip": s}`` with ``j`` the first chunk not yet wholly
    emitted and ``s`` its tokens already emitted. The buffer holds the framed stream of
    chunks ``j0, j0 + 1, ...`` (``ends``: where each ends in it) and ``pos``, the tokens
    already emitted; a read frames, in one slice-and-frame of the store, about as many chunks
    as the request still needs and at least ``_READ_TOKENS`` tokens' worth (~128 KB a
    domain held ahead), so most requests are one slice of the buffer.
    """

    def __init__(self, chunks: ShuffledDocChunks, store: TokenStore, index: np.ndarray, length: int,
                 bos: bool):
        self._chunks, self._store, self._index = chunks, store, index
        self._length, self._bos = int(length), bool(bos)
        self._c = chunks._chunk
        lo, hi = store.spans(index, self._bos)
        self._chunk_tokens = max(1.0, float((hi - lo).mean()) * self._c)   # expected
        self._reset(0, 0)

    def _reset(self, j0: int, pos: int) -> None:
        self._j0, self._pos = int(j0), int(pos)
        self._buf = np.empty(0, np.int32)
        self._ends = np.empty(0, np.int64)

    def _extend(self, want: int) -> None:
        """Frames at least one more chunk, about enough for ``want`` more tokens."""
        k = int(max(want, _READ_TOKENS) / self._chunk_tokens) + 1
        m = len(self._ends)
        # drop the chunks already emitted from the front
        c0 = int(np.searchsorted(self._ends, self._pos, side="right")) if m else 0
        cut = int(self._ends[c0 - 1]) if c0 else 0
        start = (self._j0 + m) * self._c
        lo, hi = self._store.spans(self._index[self._chunks.indices(start, start + k * self._c)],
                                   self._bos)
        new = self._store.gather(lo, hi)
        ends = np.cumsum((hi - lo).reshape(k, self._c).sum(axis=1))
        rest = self._buf[cut:]
        self._buf = np.concatenate([rest, new]) if len(rest) else new
        self._ends = np.concatenate([self._ends[c0:] - cut, ends + len(rest)])
        self._j0 += c0
        self._pos -= cut

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` sequences as int32[n, length] (as ``n`` calls of ``next``)."""
        need = int(n) * self._length
        while len(self._buf) - self._pos < need:
            self._extend(need - (len(self._buf) - self._pos))
        out = self._buf[self._pos:self._pos + need].reshape(int(n), self._length).copy()
        self._pos += need
        return out

    def __next__(self) -> np.ndarray:
        return self.take(1)[0]

    def __iter__(self):
        return self

    def get_state(self) -> dict[str, Any]:
        c = int(np.searchsorted(self._ends, self._pos, side="right"))
        if c < len(self._ends):
            start = int(self._ends[c - 1]) if c else 0
            return {"parent": {"next_index": self._j0 + c}, "skip": self._pos - start}
        total = int(self._ends[-1]) if len(self._ends) else 0
        return {"parent": {"next_index": self._j0 + c}, "skip": self._pos - total}

    def set_state(self, state: dict[str, Any]) -> None:
        self._reset(int(state["parent"]["next_index"]), int(state["skip"]))

    def close(self) -> None:
        pass


def stored_iterator(view: DomainSource, store: TokenStore, *, seed: int, chunk: int, length: int,
                    bos: bool, process_index: int = 0,
                    process_count: int = 1) -> StoredPacker:
    """Packed int32[length] sequences of ``view`` read from ``store``: the same values and
    states as the sampler's grain pipeline over ``view`` (see the module docstring)."""
    base, index = base_and_index(view)
    if len(index) and (index.max() >= len(store)):
        raise StoreError(f"domain {view.domain!r}: the store holds {len(store)} documents, the "
                         f"view reads document {int(index.max())}")
    chunks = ShuffledDocChunks(view, seed=seed, chunk=chunk, process_index=process_index,
                               process_count=process_count)
    return StoredPacker(chunks, store, index, length, bos)
