"""A sampler over domains whose sequences a function generates (synthetic, in memory).

The composition of each batch is the real :class:`mixjax.data.BatchComposer`'s (weights,
lag, modes), so a loop driven by this sampler sees the ``set_weights`` / lag semantics of
:class:`mixjax.data.DomainSampler` without files: controlled experiments
(``experiments/objective_checks.py``) and the train-core tests use it. Row ``i`` of domain
``k`` is the ``i``-th sequence ``generate`` gives for ``k``; the state is the composer's
plus how many rows of each domain were drawn, so a restored sampler continues exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mixjax.data.composer import BatchComposer

# generate(k, start, n, length) -> int32 [n, length]: rows start .. start + n - 1 of domain k
Generate = Callable[[int, int, int, int], np.ndarray]


class GeneratedSampler:
    """``__next__`` -> ``{"tokens": i32[B, seq_len + 1], "domain_id": i32[B], "domain_counts"}``."""

    def __init__(self, domains: Sequence[str], generate: Generate, *, batch_size: int,
                 seq_len: int, weights, mode: str = "multinomial", lag: int = 1, seed: int = 0):
        self.domains = tuple(domains)
        self.generate, self.seq_len, self.seed, self.lag = generate, seq_len, seed, lag
        self.composer = BatchComposer(self.domains, batch_size=batch_size, weights=weights,
                                      mode=mode, lag=lag, seed=seed)
        self.next_index = [0] * len(self.domains)

    def set_weights(self, weights, step):
        self.composer.set_weights(weights, step)

    def weights_for(self, step):
        return self.composer.weights_for(step)

    def __next__(self) -> dict:
        ids, counts = self.composer.next_ids()
        rows = np.empty((len(ids), self.seq_len + 1), np.int32)
        for k in range(len(self.domains)):
            where = np.flatnonzero(ids == k)
            if len(where):
                rows[where] = self.generate(k, self.next_index[k], len(where), self.seq_len + 1)
                self.next_index[k] += len(where)
        return {"tokens": rows, "domain_id": ids.astype(np.int32), "domain_counts": counts}

    def get_state(self) -> dict:
        return {"composer": self.composer.get_state(), "next_index": list(self.next_index)}

    def set_state(self, state: dict) -> None:
        self.composer.set_state(state["composer"])
        self.next_index = list(state["next_index"])
