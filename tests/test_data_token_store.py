"""data.token_store: the sampler reads pre-tokenised documents and gives the same batches
and states as reading the documents; stores are keyed by the source's fingerprint and a
damaged one is rebuilt."""

import json
import os

import numpy as np
import pytest

from mixjax import data
from mixjax.data import token_store as store_lib
from mixjax.data.sources import ListSource
from mixjax.data.splits import IndexedView

KEYS = ("tokens", "domain_id", "domain_counts")
# multi-byte UTF-8 in every domain: the byte ids of a character are split across rows
LETTERS = {"alpha": "ab é", "beta": "cd 中", "gamma": "ef 😀"}


def _write(root, sizes=(23, 17, 9), seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for (name, letters), n in zip(LETTERS.items(), sizes):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(n):
                text = "".join(rng.choice(list(letters), size=int(rng.integers(1, 60))))
                fh.write(json.dumps({"id": f"{name}-{i}", "text": text}) + "\n")
    return root


@pytest.fixture
def corpus(tmp_path):
    store_lib._OPEN.clear()     # each test opens its stores from disk
    return _write(tmp_path / "c"), tmp_path / "cache"


def _sampler(srcs, cache=None, **kw):
    store = {} if cache is None else {"token_store": True, "cache_dir": str(cache)}
    return data.DomainSampler(srcs, **{"batch_size": 6, "seq_len": 11, "seed": 5, "chunk": 4,
                                       "weights": [0.5, 0.3, 0.2], **store, **kw})


def _drive(s, steps, start=0):
    out = []
    for t in range(start, start + steps):
        out.append(next(s))
        w = np.arange(1.0, s.num_domains + 1)
        s.set_weights(np.roll(w / w.sum(), t), step=t)
    return out


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _stores(cache):
    return sorted(p.name for p in (cache / store_lib.SUBDIR).iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("kw", [{}, {"bos": True, "mode": "stratified", "lag": 2},
                                {"process_index": 1, "process_count": 2}])
def test_same_batches_states_and_resume(corpus, kw):
    root, cache = corpus
    srcs = data.corpus_sources(str(root))
    plain, stored = _sampler(srcs, **kw), _sampler(srcs, cache, **kw)
    # 12 steps cross several epochs of the 9-document domain (chunks across an epoch boundary)
    a, b = _drive(plain, 12), _drive(stored, 12)
    assert isinstance(stored._iterator(0), store_lib.StoredPacker)   # read from the store
    _assert_same(a, b)
    state = json.loads(json.dumps(stored.get_state()))
    assert state == plain.get_state()
    after = _drive(plain, 5, 12)
    for resumed in (_sampler(srcs, **kw), _sampler(srcs, cache, **kw)):   # either way round
        resumed.set_state(state)
        _assert_same(_drive(resumed, 5, 12), after)
        assert resumed.get_state() == plain.get_state()
    assert len(_stores(cache)) == 3          # one store per domain's file, not per split


def test_views_and_pretokenised_documents_in_memory(tmp_path):
    """A selection-like view (repeated indices) over a split, and integer-array documents of
    an in-memory source (no fingerprint: the store is built in memory)."""
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 259, size=int(rng.integers(1, 30))).astype(np.int32) for _ in range(15)]
    srcs = {"toks": ListSource(docs, "toks"),
            "view": IndexedView(ListSource(["".join(chr(97 + t % 26) for t in d) for d in docs], "view"),
                                np.array([0, 0, 3, 7, 7, 7, 12, 14]))}
    plain, stored = _sampler(srcs, weights=None, split=None), \
        _sampler(srcs, tmp_path / "cache", weights=None, split=None)
    _assert_same(_drive(plain, 8), _drive(stored, 8))
    assert not (tmp_path / "cache").exists()
    store = stored._stores[0]
    for i in (0, 9):
        np.testing.assert_array_equal(store.doc(i), docs[i])


def test_store_is_reused_and_an_edited_file_misses_it(corpus):
    root, cache = corpus
    srcs = data.corpus_sources(str(root))
    _drive(_sampler(srcs, cache), 1)
    names = _stores(cache)
    stamp = {n: os.stat(cache / store_lib.SUBDIR / n / "tokens.bin").st_mtime_ns for n in names}
    store_lib._OPEN.clear()
    _drive(_sampler(srcs, cache), 1)           # opened from disk, not rebuilt
    assert _stores(cache) == names
    assert stamp == {n: os.stat(cache / store_lib.SUBDIR / n / "tokens.bin").st_mtime_ns
                     for n in names}
    with open(root / "beta.jsonl", "a", encoding="utf-8") as fh:      # an edited source
        fh.write(json.dumps({"text": "dd 中中 c"}) + "\n")
    edited = data.corpus_sources(str(root))
    _assert_same(_drive(_sampler(edited), 10), _drive(_sampler(edited, cache), 10))
    assert len(set(_stores(cache)) - set(names)) == 1        # beta's new store beside the old


@pytest.mark.parametrize("damage", ["truncate", "flip", "offsets", "meta"])
def test_damaged_store_is_rebuilt_with_one_line(corpus, capfd, damage):
    root, cache = corpus
    srcs = {"alpha": data.corpus_sources(str(root))["alpha"]}
    want = _drive(_sampler(srcs, weights=None), 6)
    _sampler(srcs, cache, weights=None)
    (name,) = _stores(cache)
    path = cache / store_lib.SUBDIR / name
    if damage == "truncate":
        os.truncate(path / "tokens.bin", os.path.getsize(path / "tokens.bin") - 3)
    elif damage == "flip":
        raw = bytearray((path / "tokens.bin").read_bytes())
        raw[len(raw) // 2] ^= 1
        (path / "tokens.bin").write_bytes(bytes(raw))
    elif damage == "offsets":
        (path / "offsets.npy").write_bytes(b"not an npy file")
    else:
        meta = json.loads((path / "meta.json").read_text())
        del meta["num_tokens"]
        (path / "meta.json").write_text(json.dumps(meta))
    store_lib._OPEN.clear()
    capfd.readouterr()
    got = _drive(_sampler(srcs, cache, weights=None), 6)
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "'alpha'" in err[0] and "unusable" in err[0] and "rebuilding" in err[0]
    _assert_same(want, got)
    store_lib._OPEN.clear()
    assert store_lib.load(path, name, len(srcs["alpha"])).path == path   # the rebuilt one is whole


def test_errors_and_config():
    from mixjax import config as config_lib, run_identity
    from mixjax.errors import ConfigError
    with pytest.raises(ValueError, match="num_workers must be 0"):
        _sampler({"a": ListSource(["xy"], "a")}, "", weights=None, split=None, num_workers=1)
    with pytest.raises(data.DataError, match=r"domain 'big': document 1 has a token id outside"):
        _sampler({"big": ListSource([np.arange(3), np.array([70000])], "big")}, "",
                 weights=None, split=None)
    cfg = config_lib.Config()
    cfg.data.token_store, cfg.data.workers = True, 2
    with pytest.raises(ConfigError, match="data.token_store"):
        config_lib.validate(cfg)
    cfg.data.workers = 0
    off = config_lib.Config()
    # reading a store gives the same batches: the key does not change a run's identity
    assert run_identity.config_hash(cfg) == run_identity.config_hash(off)


@pytest.mark.parametrize("mode", ["resample", "weight"])
def test_config_key_through_build_data_and_selections(corpus, mode):
    """``data.token_store`` reaches the sampler; a selection's views (resampled documents)
    read through the store, and the weight mode's sample weights stay in lockstep."""
    from mixjax import config as config_lib
    from mixjax.data import selection
    from mixjax.train.data import build_data
    root, cache = corpus
    srcs = data.corpus_sources(str(root))
    (root / "spec.json").write_text(json.dumps({"domains": [
        {"name": d, "kind": "jsonl", "path": str(root / f"{d}.jsonl")} for d in LETTERS]}))
    w = {selection.content_hash(s[i]): float(i % 3) for s in srcs.values() for i in range(len(s))}
    selection.write(root / "sel.jsonl", w, scorer="test")
    out = []
    for store in (False, True):
        cfg = config_lib.Config(name="t")
        cfg.data.spec, cfg.data.cache_dir, cfg.data.token_store = str(root / "spec.json"), str(cache), store
        cfg.data.seq_len, cfg.data.batch_size = 9, 6
        cfg.data.split_min_docs, cfg.data.split_min_bytes = 1, 0
        cfg.data.selection.path, cfg.data.selection.mode = str(root / "sel.jsonl"), mode
        s = build_data(cfg).make_sampler(np.full(3, 1 / 3))
        assert (s._stores is not None) == store
        out.append([next(s) for _ in range(6)])
    _assert_same(*out)
    if mode == "weight":
        for x, y in zip(*out):
            np.testing.assert_array_equal(x["sample_weight"], y["sample_weight"])


def test_unwritable_cache_dir_is_one_clear_error(corpus):
    root, cache = corpus
    cache.mkdir()
    (cache / store_lib.SUBDIR).write_text("a file where the store directory goes")
    with pytest.raises(data.DataError, match=r"domain 'alpha': cannot write its token store .*"
                                             r"data.cache_dir"):
        _sampler({"alpha": data.corpus_sources(str(root))["alpha"]}, cache, weights=None)


def test_a_real_tokenizer_has_its_own_store(corpus):
    """A BPE tokenizer (HF ``tokenizers``): the same batches, and a store keyed apart from
    the byte tokenizer's over the same files."""
    pytest.importorskip("tokenizers")
    from ecosystem_fixtures import train_hf_bpe
    from mixjax.data import tokenizers
    root, cache = corpus
    tok = tokenizers.get("hf", path=str(train_hf_bpe(root.parent / "tok.json")))
    srcs = data.corpus_sources(str(root))
    _drive(_sampler(srcs, cache), 1)
    byte_stores = _stores(cache)
    _assert_same(_drive(_sampler(srcs, tokenizer=tok, bos=True), 8),
                 _drive(_sampler(srcs, cache, tokenizer=tok, bos=True), 8))
    assert len(set(_stores(cache)) - set(byte_stores)) == 3


def test_position_range_indices_equal_doc_index_across_epochs():
    """The store's reads take many chunks at once: ``indices(a, b)`` over several epochs
    (and a process's shard) = one ``doc_index`` per position, the stream's definition."""
    from mixjax.data.shuffling import ShuffledDocChunks
    ds = ShuffledDocChunks(ListSource(list(range(13)), "d"), seed=2, chunk=3,
                           process_index=1, process_count=2)      # n = 6 documents a epoch
    for a, b in ((0, 6), (4, 5), (5, 31), (17, 60)):
        assert ds.indices(a, b).tolist() == [ds.doc_index(i) for i in range(a, b)]
