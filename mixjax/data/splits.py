"""Deterministic document-level train/validation/test splits per domain.

Each document ``i`` of domain ``d`` gets a key ``u_i = h(seed, d, i)`` from a
counter-based 64-bit hash (SplitMix64 of seed, CRC32 of the domain name and
the index). Documents are ranked by ``u``; the first ``n_val`` go to
validation, the next ``n_test`` to test, the rest to train, with

    n_val  = max(1, round(n * f_val))   if n >= 3 else 0   (same for test)

so every domain with at least 3 documents has at least one validation and one
test document and at least one training document. The split is a function of
(seed, domain name, number of documents) only: identical across runs and
machines, and no document is in two splits (the three index sets partition
``range(n)``). Indices inside each split are sorted (file order).

Grouped documents (``groups``, e.g. the parts ``doc#0``, ``doc#1`` of one long
document; see ``DomainSource.group_keys``) hash their group instead of their
index, so a group's members sit next to each other in the ranking; each split
boundary then moves forward to the end of the group it cuts, and no group
spans two splits.

Floors (:class:`Floors`): a validation or test split that is a handful of
documents measures those documents, not the domain. With floors
``(min_docs, min_bytes)`` each evaluation split takes whole units (a group, or
one document when ungrouped) in ranking order until it holds

    >= max(n_val, min_docs) units   and   >= min_bytes bytes of text

whatever the fractions (validation first, then test, from where validation
stopped). The training split must keep at least as many units as validation
and test together; otherwise :class:`SplitFloorError` names the domain and the
numbers. Corpora carry their floors in their manifest (``split_floors``,
see :mod:`mixjax.data.corpus.recipes`); ``data.split_min_docs`` /
``data.split_min_bytes`` override them (a floor below the corpus's is logged).
The floors only move split boundaries along the same hash ranking, so the split
stays a pure function of (seed, domain, documents, fractions, floors).
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from typing import Callable, Mapping

import numpy as np

from mixjax.data.sources import DataError, DomainSource

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"validation": 0.02, "test": 0.02}

DEFAULT_FLOORS = None   # no floors unless the data (a corpus manifest) or the config sets them


class SplitFloorError(DataError):
    """A domain cannot give its validation/test splits their floors and keep most units for training."""


@dataclasses.dataclass(frozen=True)
class Floors:
    """Minimum size of each evaluation split (validation and test separately)."""

    min_docs: int = 0     # units: groups of parts of one source, or single documents
    min_bytes: int = 0    # UTF-8 bytes of text (tokens for pre-tokenized documents)

    def __post_init__(self):
        if self.min_docs < 0 or self.min_bytes < 0:
            raise ValueError(f"split floors must be >= 0, got {self}")

    @property
    def active(self) -> bool:
        return self.min_docs > 0 or self.min_bytes > 0


def doc_size(doc) -> int:
    """Size of a document for the byte floor: UTF-8 bytes of text, or number of tokens."""
    if isinstance(doc, str):
        return len(doc.encode("utf-8"))
    return int(np.asarray(doc).size)


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014), vectorised over uint64."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def doc_keys(num_docs: int, *, seed: int, domain: str,
             groups: np.ndarray | None = None) -> np.ndarray:
    """uint64 hash keys ``h(seed, domain, i)`` for ``i < num_docs`` (``groups[i]`` if given)."""
    base = _splitmix64(np.asarray([(int(seed) & 0xFFFFFFFF) << 32 | zlib.crc32(domain.encode())],
                                  dtype=np.uint64))[0]
    ids = np.arange(num_docs, dtype=np.uint64) if groups is None else np.asarray(groups, np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(ids ^ base)


def split_sizes(n: int, fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, int]:
    unknown = set(fractions) - {"validation", "test"}
    if unknown:
        raise ValueError(f"split fractions: unknown split(s) {sorted(unknown)}; use validation/test")
    sizes = {}
    for name in ("validation", "test"):
        f = float(fractions.get(name, 0.0))
        if not 0.0 <= f < 1.0:
            raise ValueError(f"split fraction of {name!r} must be in [0, 1), got {f}")
        sizes[name] = max(1, int(round(n * f))) if (n >= 3 and f > 0) else 0
    sizes["train"] = n - sizes["validation"] - sizes["test"]
    if sizes["train"] < 1 and n > 0:
        raise ValueError(f"split fractions {dict(fractions)} leave no training documents of {n}")
    return sizes


def split_indices(num_docs: int, *, seed: int, domain: str,
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  groups: np.ndarray | None = None, floors: Floors | None = None,
                  size_of: Callable[[int], int] | None = None) -> dict[str, np.ndarray]:
    """``{"train", "validation", "test"} -> sorted int64 document indices``.

    ``floors`` (with ``size_of(i)``: the size of document ``i``, needed for
    ``min_bytes``) grows the evaluation splits to their floors (module docstring)."""
    sizes = split_sizes(num_docs, fractions)
    if groups is not None and len(groups) != num_docs:
        raise ValueError(f"domain {domain!r}: {len(groups)} group keys for {num_docs} documents")
    keys = doc_keys(num_docs, seed=seed, domain=domain, groups=groups)
    order = np.argsort(keys, kind="stable")
    if floors is not None and floors.active:
        return _floored_split(order, keys, sizes, floors, size_of, domain, fractions)
    cuts = [sizes["validation"], sizes["validation"] + sizes["test"]]
    if groups is not None:  # never cut through a group
        sorted_keys = keys[order]
        start = 0
        for j, size in enumerate((sizes["validation"], sizes["test"])):
            b = start + size
            while 0 < b < num_docs and sorted_keys[b] == sorted_keys[b - 1]:
                b += 1
            cuts[j] = start = b
        if num_docs and cuts[1] >= num_docs:
            raise ValueError(f"domain {domain!r}: document groups leave no training documents")
    return {
        "validation": np.sort(order[:cuts[0]]),
        "test": np.sort(order[cuts[0]:cuts[1]]),
        "train": np.sort(order[cuts[1]:]),
    }


def _floored_split(order, keys, sizes, floors: Floors, size_of, domain, fractions) -> dict[str, np.ndarray]:
    """Walk the ranking unit by unit (a unit: a run of equal keys) filling validation, then test."""
    if floors.min_bytes and size_of is None:
        raise ValueError(f"domain {domain!r}: a byte floor needs document sizes (size_of)")
    n = len(order)
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n].astype(int)
    num_units = len(starts)
    cuts, u = [], 0
    got = {}
    for name in ("validation", "test"):
        want_docs, units, docs, nbytes = sizes[name], 0, 0, 0
        while u < num_units and (docs < want_docs or units < floors.min_docs or nbytes < floors.min_bytes):
            a, b = int(starts[u]), int(ends[u])
            if floors.min_bytes:
                nbytes += sum(size_of(int(i)) for i in order[a:b])
            docs += b - a
            units += 1
            u += 1
        got[name] = (units, docs, nbytes)
        cuts.append(int(ends[u - 1]) if u else 0)
        if units < floors.min_docs or nbytes < floors.min_bytes:
            break
    train_units = num_units - u
    eval_units = sum(g[0] for g in got.values())
    short = [k for k, (un, _, nb) in got.items() if un < floors.min_docs or nb < floors.min_bytes]
    if short or len(got) < 2 or train_units < eval_units:
        detail = "; ".join(f"{k}: {un} units / {nb} bytes" for k, (un, _, nb) in got.items())
        raise SplitFloorError(
            f"domain {domain!r}: cannot give validation and test each >= {floors.min_docs} documents "
            f"(source-grouped units) and >= {floors.min_bytes} bytes while training keeps at least as many "
            f"units as both: the domain has {num_units} units ({n} documents); walking the split ranking gave "
            f"{detail}, leaving {train_units} units for training (fractions {dict(fractions)}). Add documents, "
            f"or set a smaller floor explicitly: --set data.split_min_docs=N --set data.split_min_bytes=B")
    return {
        "validation": np.sort(order[:cuts[0]]),
        "test": np.sort(order[cuts[0]:cuts[1]]),
        "train": np.sort(order[cuts[1]:]),
    }


def source_floors(source: DomainSource) -> Floors | None:
    """The floors attached to a source (``source.split_floors``; set from a corpus manifest or the config)."""
    return getattr(source, "split_floors", None)


class IndexedView(DomainSource):
    """The documents of ``source`` at ``indices`` (a view; picklable): the one subset
    mechanism behind splits and data selections."""

    def __init__(self, source: DomainSource, indices: np.ndarray, domain: str | None = None):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.domain = domain or source.domain

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[int(self.indices[index])]

    def group_keys(self):
        keys = self.source.group_keys()
        return None if keys is None else keys[self.indices]


class SplitSource(IndexedView):
    """The documents of ``source`` in one split."""

    def __init__(self, source: DomainSource, indices: np.ndarray, split: str, domain: str | None = None):
        super().__init__(source, indices, domain)
        self.split = split
        if len(self.indices) == 0:
            raise DataError(f"domain {self.domain!r}: split {split!r} has zero documents "
                            f"(domain has {len(source)}); change the split fractions")

    def describe(self):
        return f"{self.source.describe()}[{self.split}: {len(self)} docs]"


def split_source(source: DomainSource, split: str, *, seed: int = 0,
                 fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                 domain: str | None = None) -> SplitSource:
    """The ``split`` part of ``source``; ``domain`` (default ``source.domain``) keys the hash."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    domain = domain or source.domain
    return SplitSource(source, cached_split_indices(source, seed=seed, fractions=fractions,
                                                    domain=domain)[split], split, domain)


def cached_split_indices(source: DomainSource, *, seed: int, fractions: Mapping[str, float],
                         domain: str) -> dict[str, np.ndarray]:
    """:func:`split_indices` of ``source`` with its own floors, memoised on the source
    (a byte floor reads documents; the sampler, token counts and eval sets all ask)."""
    floors = source_floors(source)
    fractions = dict(fractions)
    key = (int(seed), tuple(sorted(fractions.items())), domain, floors, len(source))
    memo = source.__dict__.setdefault("_split_memo", {}) if hasattr(source, "__dict__") else {}
    if key not in memo:
        memo[key] = split_indices(len(source), seed=seed, domain=domain, fractions=fractions,
                                  groups=source.group_keys(), floors=floors,
                                  size_of=lambda i: doc_size(source[i]))
    return memo[key]


def set_floors(sources: Mapping[str, DomainSource], floors: Floors | None, *, reason: str = "") -> None:
    """Attach ``floors`` to every source (``None`` keeps the sources' own)."""
    if floors is None:
        return
    for name, src in sources.items():
        own = source_floors(src)
        if own is not None and (floors.min_docs < own.min_docs or floors.min_bytes < own.min_bytes):
            print(f"[mixjax data] domain {name!r}: split floor lowered from {own.min_docs} documents / "
                  f"{own.min_bytes} bytes to {floors.min_docs} / {floors.min_bytes}{reason}: its validation "
                  "and test sets are smaller than the corpus's default", file=sys.stderr, flush=True)
        src.split_floors = floors


def split_sources(sources: Mapping[str, DomainSource], split: str, *, seed: int = 0,
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, SplitSource]:
    """``split`` of every domain, keyed like ``sources``."""
    out = {}
    for name, src in sources.items():
        out[name] = split_source(src, split, seed=seed, fractions=fractions, domain=name)
    return out
