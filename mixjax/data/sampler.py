"""The domain sampler: per-domain grain pipelines + a batch assembler.

Design B of jax-stack.md B3. Every domain ``d`` has its own grain pipeline

    ShuffledDocChunks(train split of d, seed=h(seed, d), chunk=c,
                      shard=process_index::process_count)  # repeated, reshuffled every epoch
      .map(TokenizeChunk(tokenizer))       # [BOS] doc EOS ...; in workers if num_workers > 0
      .to_iter_dataset() [-> mp_prefetch(num_workers)] -> PackIterDataset(S + 1)

Worker processes only read and tokenize; packing runs in this process on the
documents in index order, so the batches do not depend on ``num_workers``.

and the main process assembles each global batch from the *current* weight
vector (:class:`~mixjax.data.composer.BatchComposer`): the composer picks the
domain of every row, then row ``i`` is the next packed sequence of domain
``domain_id[i]``. Batches are

    {"tokens": int32[B, S+1], "domain_id": int32[B], "domain_counts": int32[K]}

Weights set with ``set_weights(w, step=t)`` apply from batch ``t + lag``
(default lag 1). ``get_state()`` is a JSON-serialisable dict holding the
composer state (step, pending weights, stratified remainder; the RNG is
counter-based and needs none) and every per-domain grain iterator's state;
``set_state`` restores it exactly, workers or not.

Multi-host: with ``process_count = P`` the composition of the *global* batch
(size ``B``) is computed identically on every process; process ``p`` returns
rows ``[p B/P, (p+1) B/P)`` (``tokens`` and ``domain_id``), reading only its
shard ``[p::P]`` of each domain's documents. ``domain_counts`` always counts
the global batch.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import grain
import numpy as np

from mixjax.data import splits as splits_lib
from mixjax.data import tokenizers
from mixjax.data.composer import MODES, BatchComposer, resolve_weights  # noqa: F401 (re-export)
from mixjax.data.packing import PackIterDataset, TokenizeChunk
from mixjax.data.shuffling import ShuffledDocChunks
from mixjax.data.sources import DataError, DomainSource, as_domain_list

STATE_VERSION = 1


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside absl.app.run they are unparsed.
    try:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:  # pragma: no cover
        pass


def domain_seed(seed: int, domain: str) -> int:
    """The shuffle seed of one domain's pipeline: a 31-bit hash of (seed, name)."""
    return zlib.crc32(f"{int(seed)}/{domain}".encode()) & 0x7FFFFFFF


class DomainSampler:
    """Weighted, resumable batches of packed per-domain sequences.

    Args:
      sources: ``{domain: DomainSource}`` (order = domain ids) or a list of sources.
      batch_size: global batch size ``B`` (``per_domain``: may be omitted).
      seq_len: ``S``; sequences hold ``S + 1`` tokens.
      weights: initial weights: None (uniform), ``{domain: w}`` or a vector.
      tokenizer: a Tokenizer or a name for :func:`tokenizers.get` (default byte).
      mode: ``multinomial`` | ``stratified`` | ``per_domain``.
      per_domain_count: rows per domain in ``per_domain`` mode.
      lag: batches between ``set_weights(w, step=t)`` and its first use (``t + lag``).
      seed: seeds the composition RNG and each domain's shuffle.
      split: ``"train"`` (default) uses each domain's train split (see
        :mod:`mixjax.data.splits`); ``None`` uses every document.
      split_seed, split_fractions: the split definition (shared with eval sets).
      num_workers: grain worker processes per domain (0: tokenize in this process).
      worker_buffer_size: document chunks each worker prefetches.
      bos: start every document with BOS.
      chunk: documents per grain element (amortises grain's per-element cost;
        part of the data definition, like ``seed``).
      process_index, process_count: this host's share (see module docstring).
      token_store: serve the documents from each domain's pre-tokenised token store
        (:mod:`mixjax.data.token_store`; built on first use under ``cache_dir``): the
        same batches and states as without it, one array slice per document instead
        of a read + decode + tokenisation. In-process only (``num_workers=0``).
      cache_dir: where the stores live (None: the default cache directory; ``""``:
        in memory, built when the sampler is).

    Not thread-safe: the train loop's prefetch thread and its main thread share a
    sampler through :class:`mixjax.train.prefetch.BatchPrefetcher`, which holds the
    one lock around every call.
    """

    def __init__(self, sources: Mapping[str, DomainSource] | list[DomainSource], *,
                 seq_len: int, batch_size: int | None = None, weights: Any = None,
                 tokenizer: Any = "byte", mode: str = "multinomial",
                 per_domain_count: int | None = None, lag: int = 1, seed: int = 0,
                 split: str | None = "train", split_seed: int = 0,
                 split_fractions: Mapping[str, float] = splits_lib.DEFAULT_FRACTIONS,
                 num_workers: int = 0, worker_buffer_size: int = 4, bos: bool = False,
                 chunk: int = 16,
                 process_index: int = 0, process_count: int = 1,
                 token_store: bool = False, cache_dir: str | None = None):
        names, srcs = as_domain_list(sources)
        self.domains: tuple[str, ...] = tuple(names)
        self.tokenizer = tokenizers.get(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
        self.composer = BatchComposer(self.domains, batch_size=batch_size, weights=weights, mode=mode,
                                      per_domain_count=per_domain_count, lag=lag, seed=seed)
        self.batch_size = self.composer.batch_size
        if self.batch_size % process_count:
            raise ValueError(f"global batch_size {self.batch_size} is not divisible by "
                             f"process_count {process_count}")
        self.seq_len, self.seed, self.mode, self.lag = int(seq_len), int(seed), mode, int(lag)
        self.split, self.num_workers, self.worker_buffer_size = split, int(num_workers), worker_buffer_size
        self.bos, self.chunk = bool(bos), int(chunk)
        self.process_index, self.process_count = int(process_index), int(process_count)
        if split is not None:
            srcs = [splits_lib.split_source(s, split, seed=split_seed, fractions=split_fractions, domain=n)
                    for n, s in zip(names, srcs)]
        for n, s in zip(names, srcs):
            if len(s) < process_count:
                raise DataError(f"domain {n!r}: {len(s)} documents cannot be shared by "
                                f"{process_count} processes")
        self.sources: tuple[DomainSource, ...] = tuple(srcs)
        self._stores: list | None = None
        if token_store:
            if self.num_workers:
                raise ValueError(f"token_store reads in this process: num_workers must be 0, "
                                 f"got {self.num_workers} (workers only read and tokenize, "
                                 f"which the store does once)")
            from mixjax.data import token_store as store_lib
            self._stores = [store_lib.open_store(store_lib.base_and_index(s)[0], self.tokenizer,
                                                 cache_dir, n) for n, s in zip(names, srcs)]
        self._iters: list[grain.DatasetIterator | None] = [None] * len(self.domains)
        self.split_seed, self.split_fractions = int(split_seed), dict(split_fractions)

    # -- pipelines -------------------------------------------------------------
    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def step(self) -> int:
        """Index of the next batch."""
        return self.composer.step

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    def domain_dataset(self, d: int) -> grain.IterDataset:
        """The grain pipeline of domain ``d`` (packed int32[S+1] sequences, infinite)."""
        tok = self.tokenizer
        ds = ShuffledDocChunks(self.sources[d], seed=domain_seed(self.seed, self.domains[d]),
                               chunk=self.chunk, process_index=self.process_index,
                               process_count=self.process_count)
        ds = ds.map(TokenizeChunk(tok, bos=self.bos))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if self.num_workers > 0:
            # Workers read + tokenize; grain hands their outputs back in index
            # order, so packing below (in this process) sees the same document
            # stream for any num_workers: the data do not depend on it.
            _ensure_absl_flags_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=self.worker_buffer_size))
        it = PackIterDataset(it, length=self.seq_len + 1, eos_id=None)   # chunks come framed
        return it

    def _iterator(self, d: int) -> grain.DatasetIterator:
        it = self._iters[d]
        if it is None:   # created on first use: a domain never drawn costs nothing
            if self._stores is not None:
                from mixjax.data import token_store as store_lib
                it = store_lib.stored_iterator(
                    self.sources[d], self._stores[d], seed=domain_seed(self.seed, self.domains[d]),
                    chunk=self.chunk, length=self.seq_len + 1, bos=self.bos,
                    process_index=self.process_index,
                    process_count=self.process_count)
            else:
                it = iter(self.domain_dataset(d))
            self._iters[d] = it
        return it

    def start(self) -> "DomainSampler":
        """Builds every domain's pipeline now (and starts its workers) instead of on first draw."""
        for d in range(self.num_domains):
            self._iterator(d)
        return self

    # -- weights ---------------------------------------------------------------
    def set_weights(self, weights: Any, step: int) -> None:
        """Weights produced after train step ``step``; batches ``>= step + lag`` use them."""
        self.composer.set_weights(weights, step)

    def weights_for(self, step: int) -> np.ndarray:
        """float64[K] weights batch ``step`` is drawn with (as known now)."""
        return self.composer.weights_for(step)

    # -- batches ---------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        ids, counts = self.composer.next_ids()
        b = self.local_batch_size
        ids = ids[self.process_index * b:(self.process_index + 1) * b]
        return {"tokens": self.read_rows(ids), "domain_id": ids, "domain_counts": counts}

    def read_rows(self, ids: np.ndarray) -> np.ndarray:
        """int32[len(ids), S+1]: row ``i`` is the next packed sequence of domain ``ids[i]``.

        The rows of domain ``d`` take ``d``'s next ``n_d`` sequences in row order, one
        block copy per domain (no per-row loop): the same rows, and the same iterator
        states after, as reading them one by one.
        """
        ids = np.asarray(ids)
        tokens = np.empty((len(ids), self.seq_len + 1), np.int32)
        # rows grouped by domain, each group in row order (a stable sort): one pass for all
        # domains instead of a unique + a flatnonzero per domain
        order = np.argsort(ids, kind="stable")
        counts = np.bincount(ids, minlength=self.num_domains).tolist()
        at = 0
        for d, n in enumerate(counts):
            if not n:
                continue
            rows = order[at:at + n]
            at += n
            it = self._iterator(d)
            take = getattr(it, "take", None)
            tokens[rows] = take(n) if take is not None else np.stack([next(it) for _ in rows])
        return tokens

    # -- checkpointing ---------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"domains": list(self.domains), "batch_size": self.batch_size, "seq_len": self.seq_len,
                "mode": self.mode, "seed": self.seed, "lag": self.lag, "split": self.split,
                "split_seed": self.split_seed, "split_fractions": self.split_fractions,
                "tokenizer": self.tokenizer.describe(),
        "bos": self.bos, "chunk": self.chunk,
                "process_index": self.process_index, "process_count": self.process_count}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state; ``set_state`` on an equal sampler resumes exactly."""
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "num_workers": self.num_workers,    # iterator states differ with and without workers
            "composer": self.composer.get_state(),
            "domains": {n: (None if it is None else it.get_state())
                        for n, it in zip(self.domains, self._iters)},
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')} != {STATE_VERSION}")
        if state.get("num_workers", 0) != self.num_workers:
            raise ValueError(f"sampler state was saved with num_workers={state.get('num_workers', 0)}; "
                             f"grain iterator states restore only into the same number of workers "
                             f"(now {self.num_workers}); the data stream itself does not depend on it")
        mine = self._config()
        diff = {k: (state["config"].get(k), v) for k, v in mine.items() if state["config"].get(k) != v}
        if diff:
            raise ValueError("sampler state was saved with a different configuration: "
                             + ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        self.composer.set_state(state["composer"])
        for d, name in enumerate(self.domains):
            saved = state["domains"].get(name)
            if saved is None:
                self._close(d)
            else:
                self._iterator(d).set_state(saved)

    def _close(self, d: int) -> None:
        it, self._iters[d] = self._iters[d], None
        if it is not None and hasattr(it, "close"):
            it.close()

    def close(self) -> None:
        """Stops worker processes (if any)."""
        for d in range(len(self._iters)):
            self._close(d)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_sampler(spec_or_sources: Any, **kwargs: Any) -> DomainSampler:
    """:class:`DomainSampler` from a ``DatasetSpec``, a corpus name or ``{domain: source}``."""
    from mixjax.data import spec as spec_lib
    return DomainSampler(spec_lib.resolve_sources(spec_or_sources), **kwargs)
