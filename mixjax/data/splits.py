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
"""

from __future__ import annotations

import zlib
from typing import Mapping

import numpy as np

from mixjax.data.sources import DataError, DomainSource

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"validation": 0.02, "test": 0.02}

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
                  groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{"train", "validation", "test"} -> sorted int64 document indices``."""
    sizes = split_sizes(num_docs, fractions)
    if groups is not None and len(groups) != num_docs:
        raise ValueError(f"domain {domain!r}: {len(groups)} group keys for {num_docs} documents")
    keys = doc_keys(num_docs, seed=seed, domain=domain, groups=groups)
    order = np.argsort(keys, kind="stable")
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


class SplitSource(DomainSource):
    """The documents of ``source`` at ``indices`` (a view; picklable)."""

    def __init__(self, source: DomainSource, indices: np.ndarray, split: str, domain: str | None = None):
        self.source, self.indices, self.split = source, np.asarray(indices, np.int64), split
        self.domain = domain or source.domain
        if len(self.indices) == 0:
            raise DataError(f"domain {self.domain!r}: split {split!r} has zero documents "
                            f"(domain has {len(source)}); change the split fractions")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[int(self.indices[index])]

    def group_keys(self):
        keys = self.source.group_keys()
        return None if keys is None else keys[self.indices]

    def describe(self):
        return f"{self.source.describe()}[{self.split}: {len(self)} docs]"


def split_source(source: DomainSource, split: str, *, seed: int = 0,
                 fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                 domain: str | None = None) -> SplitSource:
    """The ``split`` part of ``source``; ``domain`` (default ``source.domain``) keys the hash."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    domain = domain or source.domain
    idx = split_indices(len(source), seed=seed, domain=domain, fractions=fractions,
                        groups=source.group_keys())
    return SplitSource(source, idx[split], split, domain)


def split_sources(sources: Mapping[str, DomainSource], split: str, *, seed: int = 0,
                  fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, SplitSource]:
    """``split`` of every domain, keyed like ``sources``."""
    out = {}
    for name, src in sources.items():
        out[name] = split_source(src, split, seed=seed, fractions=fractions, domain=name)
    return out
