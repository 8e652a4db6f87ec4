"""Fixed evaluation sets: packed validation/test sequences per domain.

``eval_arrays(sources, seq_len=S, split="validation", num_sequences=N)``
returns ``{domain: int32[n_d, S+1]}`` with ``n_d = min(N, available)``. The
documents of the split are read in index order (the split itself is a hash of
(split_seed, domain, index) with per-domain floors, see
:mod:`mixjax.data.splits`), tokenized and packed exactly like training data
(EOS between documents); the last partial sequence is padded with ``pad_id``
(padding is masked out of the loss). When the split packs into ``M > N``
sequences, the ``N`` kept are spread evenly over all of them (rows
``round(j (M-1) / (N-1))``, ``j < N``), so the eval set samples every part of
the split instead of its first documents only. The arrays depend only on
(sources, tokenizer, seq_len, split, split_seed, split_fractions, floors, N):
never on the training seed or weights, so numbers are comparable across runs;
:func:`eval_checksum` fingerprints them (recorded in every run's
``run_info.json``; ``mixjax compare`` refuses to tabulate runs whose
checksums differ). ``strict=True`` makes a domain with fewer than ``N``
sequences an error instead.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from mixjax.data import splits as splits_lib
from mixjax.data import tokenizers
from mixjax.data.packing import pack_arrays
from mixjax.data.sources import DataError, as_domain_list

EVAL_SPLITS = ("validation", "test")


def eval_arrays(sources: Any, *, seq_len: int, split: str = "validation", num_sequences: int = 16,
                tokenizer: Any = "byte", split_seed: int = 0,
                split_fractions: Mapping[str, float] = splits_lib.DEFAULT_FRACTIONS,
                bos: bool = False, strict: bool = False) -> dict[str, np.ndarray]:
    """``{domain: int32[n_d, seq_len + 1]}`` (see module docstring)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval split must be one of {EVAL_SPLITS}, got {split!r}")
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    tok = tokenizers.get(tokenizer) if isinstance(tokenizer, str) else tokenizer
    names, srcs = as_domain_list(sources)
    out = {}
    for name, src in zip(names, srcs):
        part = splits_lib.split_source(src, split, seed=split_seed, fractions=split_fractions, domain=name)
        docs = (part[i] for i in range(len(part)))
        tokens = (d if isinstance(d, np.ndarray) else tok.encode_array(d) for d in docs)
        arr = pack_arrays(tokens, length=seq_len + 1, eos_id=tok.eos_id, pad_id=tok.pad_id,
                          bos_id=tok.bos_id if bos else None)
        arr = spread_rows(arr, num_sequences)
        if strict and len(arr) < num_sequences:
            raise DataError(f"domain {name!r}: {split} split holds only {len(arr)} sequences of "
                            f"{seq_len + 1} tokens, {num_sequences} requested")
        out[name] = arr
    return out


def eval_token_counts(arrays: Mapping[str, np.ndarray], pad_id: int) -> dict[str, int]:
    """Number of loss targets (non-PAD ``tokens[:, 1:]``) per domain."""
    return {k: int(np.count_nonzero(v[:, 1:] != pad_id)) for k, v in arrays.items()}


def spread_rows(arr: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of ``arr`` spread evenly from first to last (all rows if ``len(arr) <= n``)."""
    m = len(arr)
    if m <= n:
        return arr
    if n == 1:
        return arr[:1]
    rows = np.round(np.arange(n) * (m - 1) / (n - 1)).astype(np.int64)
    return arr[rows]


def eval_checksum(arrays: Mapping[str, np.ndarray], tokenizer: str = "") -> str:
    """sha256 over (tokenizer name, then per domain in sorted order: name, shape, int32 bytes).

    A pure function of the eval sets, hence of (corpus, split config, seq_len,
    tokenizer, number of sequences): two runs evaluated on the same data agree."""
    h = hashlib.sha256(f"tokenizer={tokenizer}\n".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name], np.int32))
        h.update(f"{name}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()
