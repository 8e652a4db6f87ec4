"""The swarm's batch streams: one shared uniform batch (upweight) or one per proxy (upsample)."""

from __future__ import annotations

import numpy as np

from mixjax.search.swarm_mesh import proxy_seed


class UpweightBatches:
    """One stratified uniform batch per step, shared by every proxy."""

    route = "upweight"

    def __init__(self, sampler):
        self.sampler = sampler

    def __next__(self) -> dict[str, np.ndarray]:
        b = next(self.sampler)
        counts = np.asarray(b["domain_counts"], np.float64)
        return {"tokens": np.asarray(b["tokens"], np.int32),
                "domain_id": np.asarray(b["domain_id"], np.int32),
                "sampling_weights": (counts / counts.sum()).astype(np.float32)}

    def get_state(self) -> dict:
        return {"sampler": self.sampler.get_state()}

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state["sampler"])


class UpsampleBatches:
    """Per-proxy batches [P, B, S+1]: one composer per proxy, shared domain pipelines."""

    route = "upsample"

    def __init__(self, sampler, mixtures: np.ndarray, *, mode: str, seed: int,
                 proxies: range | None = None):
        from mixjax.data.composer import BatchComposer
        self.sampler = sampler          # its per-domain iterators supply every proxy's rows
        # the proxies this process draws (all of them on one host; its block on a pod)
        proxies = range(len(mixtures)) if proxies is None else proxies
        self.mixtures = np.asarray(mixtures, np.float64)[proxies.start:proxies.stop]
        self.composers = [BatchComposer(sampler.domains, batch_size=sampler.batch_size,
                                        weights=np.asarray(mixtures, np.float64)[p], mode=mode,
                                        seed=proxy_seed(seed, p)) for p in proxies]
        self._weights = self.mixtures.astype(np.float32)
        self._weights.flags.writeable = False   # shared by every batch

    def __next__(self) -> dict[str, np.ndarray]:
        from mixjax.data.composer import next_ids_many
        n, b = len(self.composers), self.sampler.batch_size
        ids, counts = next_ids_many(self.composers)   # = each composer's next_ids()
        # All proxies' rows in one read, proxy-major: domain d's pipeline hands its next
        # sum_p n_{p,d} sequences to the rows of d in (proxy, row) order, which is the
        # order of one read per proxy, so the tokens and the iterator states are the
        # same (tests/test_search_swarm.py), with K block copies instead of P x K.
        tokens = self.sampler.read_rows(ids.reshape(-1)).reshape(n, b, -1)
        return {"tokens": tokens, "domain_id": ids, "domain_counts": counts,
                "sampling_weights": self._weights}

    def get_state(self) -> dict:
        return {"sampler": self.sampler.get_state(),
                "composers": [c.get_state() for c in self.composers]}

    def set_state(self, state: dict) -> None:
        self.sampler.set_state(state["sampler"])
        for c, s in zip(self.composers, state["composers"]):
            c.set_state(s)


def _stratified_copy(sampler, data_lib):
    """The same sampler in stratified mode (the upweight route needs fixed proportions)."""
    return data_lib.DomainSampler(
        dict(zip(sampler.domains, sampler.sources)), seq_len=sampler.seq_len,
        batch_size=sampler.batch_size, weights=None, tokenizer=sampler.tokenizer,
        mode="stratified", lag=sampler.lag, seed=sampler.seed, split=None,
        num_workers=sampler.num_workers, bos=sampler.bos, chunk=sampler.chunk,
        process_index=sampler.process_index, process_count=sampler.process_count)
