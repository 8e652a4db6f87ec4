import pickle

import numpy as np
import pytest

from mixjax.data.shuffling import ShuffledDocChunks
from mixjax.data.sources import DataError, ListSource


def _stream(ds, n_chunks):
    return [doc for j in range(n_chunks) for doc in ds[j]]


def test_each_epoch_visits_every_document_once_in_a_new_order():
    src = ListSource(list(range(50)), "d")
    ds = ShuffledDocChunks(src, seed=3, chunk=7)
    stream = _stream(ds, 50)          # 350 docs = 7 epochs
    epochs = [stream[e * 50:(e + 1) * 50] for e in range(7)]
    for ep in epochs:
        assert sorted(ep) == list(range(50))
    assert len({tuple(ep) for ep in epochs}) == 7
    assert _stream(ShuffledDocChunks(src, seed=3, chunk=7), 50) == stream        # pure in seed
    assert _stream(ShuffledDocChunks(src, seed=4, chunk=7), 50) != stream
    assert _stream(ShuffledDocChunks(src, seed=3, chunk=5), 70) == stream        # chunking only groups
    assert _stream(pickle.loads(pickle.dumps(ds)), 50) == stream


def test_process_shards_are_disjoint_and_cover():
    src = ListSource(list(range(23)), "d")
    shards = [set(_stream(ShuffledDocChunks(src, seed=0, chunk=1, process_index=p, process_count=3), 8))
              for p in range(3)]
    assert set.union(*shards) == set(range(23))
    assert sum(len(s) for s in shards) == 23
    with pytest.raises(DataError, match="domain 'd': no documents for process 25 of 30"):
        ShuffledDocChunks(src, seed=0, process_index=25, process_count=30)


def test_chunk_gather_equals_doc_index_per_document():
    """A chunk's one-slice gather = one doc_index per position, epoch boundaries included."""
    class Src:
        domain = "x"

        def __len__(self):
            return 11

        def __getitem__(self, i):
            assert type(i) is int
            return i

    for chunk, pc, pi in ((3, 1, 0), (4, 2, 1), (16, 3, 2)):
        ds = ShuffledDocChunks(Src(), seed=7, chunk=chunk, process_index=pi, process_count=pc)
        for index in range(12):
            start = index * chunk
            assert ds[index] == [ds.doc_index(i) for i in range(start, start + chunk)]
