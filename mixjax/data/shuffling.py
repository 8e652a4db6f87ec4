"""A domain's documents, shuffled per epoch, repeated forever, in chunks.

Element ``j`` of :class:`ShuffledDocChunks` is the list of documents at stream
positions ``j c, ..., j c + c - 1`` (``c`` = ``chunk``), where stream position
``i`` holds document

    doc(i) = shard[pi_e[i mod n]],   e = i // n,
    pi_e   = numpy.random.default_rng([seed, e]).permutation(n)

and ``shard`` is this process's share ``range(p, N, P)`` of the ``N``
documents (``n = len(shard)``). Every epoch visits each document once in a
fresh order; the map is a pure function of (seed, j), so grain iterator states
stay plain indices.

Why not ``MapDataset.shuffle().repeat()`` per document: grain's per-index
Feistel shuffle costs ~80 us and each grain element ~30-100 us of bookkeeping
(measured with benchmarks/bench_data.py), more than reading and
byte-tokenizing a short document. A cached permutation costs O(n) once per
epoch, and chunks amortise grain's per-element cost over ``c`` documents. The
cache holds at most two epochs (int32 when n < 2^31): ~8 bytes per document.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from mixjax.data.sources import DataError, DomainSource


class ShuffledDocChunks(grain.MapDataset):
    """Infinite chunks of epoch-shuffled documents of one source (see module docstring)."""

    def __init__(self, source: DomainSource, *, seed: int, chunk: int = 16,
                 process_index: int = 0, process_count: int = 1):
        super().__init__([])
        self._source = source
        self._offset, self._stride = int(process_index), int(process_count)
        self._n = len(range(self._offset, len(source), self._stride))
        if self._n == 0:
            raise DataError(f"domain {source.domain!r}: no documents for process {process_index} "
                            f"of {process_count} ({len(source)} documents in all)")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self._seed, self._chunk = int(seed), int(chunk)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            dtype = np.int32 if self._n < 2**31 else np.int64
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._n).astype(dtype)
            self._cache[epoch] = perm
        return perm

    def doc_index(self, position: int) -> int:
        """Source index of the document at stream position ``position``."""
        epoch, pos = divmod(int(position), self._n)
        return self._offset + self._stride * int(self.permutation(epoch)[pos])

    def chunk_indices(self, index: int) -> np.ndarray:
        """int64[chunk]: the source indices of the documents of element ``index``."""
        return self.indices(int(index) * self._chunk, (int(index) + 1) * self._chunk)

    def indices(self, start: int, stop: int) -> np.ndarray:
        """int64: the source indices of the documents at stream positions ``[start, stop)``."""
        e0, p0 = divmod(int(start), self._n)
        if p0 + (stop - start) <= self._n:   # one epoch (the usual case): one slice
            perm = self.permutation(e0)[p0:p0 + (stop - start)]
        else:
            epoch, within = np.divmod(np.arange(start, stop, dtype=np.int64), self._n)
            perm = np.empty(stop - start, np.int64)
            for e in range(e0, int(epoch[-1]) + 1):
                at = epoch == e
                perm[at] = self.permutation(e)[within[at]]
        return self._offset + self._stride * perm.astype(np.int64)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        source = self._source
        return [source[i] for i in self.chunk_indices(index).tolist()]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def __str__(self) -> str:
        return f"ShuffledDocChunks(n={self._n}, chunk={self._chunk}, seed={self._seed})"
