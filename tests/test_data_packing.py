import grain
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixjax import data
from mixjax.data.packing import PackIterDataset, pack_arrays

from data_fixtures import ALPHABETS, write_domains

EOS, PAD = 257, 256


def _docs(seed=0, n=30):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(0, 40))).astype(np.int32) for _ in range(n)]


def test_pack_arrays_concat_then_split():
    docs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    out = pack_arrays(docs, length=4, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(out, [[1, 2, 3, EOS], [4, EOS, 5, 6], [EOS, PAD, PAD, PAD]])
    out = pack_arrays(docs, length=4, eos_id=EOS, pad_id=PAD, bos_id=258, pad_last=False)
    np.testing.assert_array_equal(out, [[258, 1, 2, 3], [EOS, 258, 4, EOS], [258, 5, 6, EOS]])
    assert pack_arrays(docs, length=4, eos_id=EOS, pad_id=PAD, max_sequences=1).shape == (1, 4)


def test_pack_iter_matches_pack_arrays_and_restores():
    docs = _docs()
    ds = PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), length=9, eos_id=EOS)
    expected = pack_arrays(docs, length=9, eos_id=EOS, pad_id=PAD, pad_last=False)
    it = iter(ds)
    got, states = [], []
    for _ in range(len(expected)):
        states.append(it.get_state())
        got.append(next(it))
    np.testing.assert_array_equal(np.stack(got), expected)
    # restoring any intermediate state (often mid-document) continues identically
    for k in (1, 3, len(expected) // 2, len(expected) - 1):
        it2 = iter(ds)
        it2.set_state(states[k])
        np.testing.assert_array_equal(np.stack([next(it2) for _ in range(len(expected) - k)]), expected[k:])


def test_sampler_rows_never_mix_domains(tmp_path):
    srcs = data.corpus_sources(str(write_domains(tmp_path / "c")))
    sampler = data.DomainSampler(srcs, batch_size=16, seq_len=48, seed=1)
    names = sampler.domains
    for _ in range(20):
        batch = next(sampler)
        for row, d in zip(batch["tokens"], batch["domain_id"]):
            allowed = {ord(c) for c in ALPHABETS[names[d]]} | {EOS}
            assert set(row.tolist()) <= allowed, names[d]


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.integers(0, 30), min_size=1, max_size=25), length=st.integers(2, 17),
       cut=st.integers(0, 10))
def test_pack_iter_restore_property(lens, length, cut):
    docs = [np.full(n, i % 250, np.int32) for i, n in enumerate(lens)]
    ds = PackIterDataset(grain.MapDataset.source(docs).repeat().to_iter_dataset(), length=length, eos_id=EOS)
    it = iter(ds)
    for _ in range(cut):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(8)]
    it2 = iter(ds)
    it2.set_state(state)
    np.testing.assert_array_equal(np.stack([next(it2) for _ in range(8)]), np.stack(expected))


def test_sampler_bos_frames_every_document(tmp_path):
    srcs = data.corpus_sources(str(write_domains(tmp_path / "c", num_docs=(20,))))
    s = data.DomainSampler(srcs, batch_size=4, seq_len=64, bos=True, split=None)
    flat = np.concatenate([next(s)["tokens"].reshape(-1) for _ in range(10)])
    eos_at = np.flatnonzero(flat == EOS)
    assert len(eos_at) > 3
    # after every EOS (except at the very end) the next document starts with BOS
    assert np.all(flat[eos_at[eos_at + 1 < len(flat)] + 1] == 258)
    assert flat[0] == 258 and np.count_nonzero(flat == 258) == len(eos_at) + (flat[-1] != EOS)
