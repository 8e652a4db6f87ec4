import json
import pickle

import numpy as np
import pytest

from mixjax import data
from mixjax.data.sources import DataError

from data_fixtures import write_domains


def _jsonl(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


def test_jsonl_reads_and_pickles(tmp_path):
    p = _jsonl(tmp_path / "web.jsonl", [{"text": "one"}, {"text": "two ü"}, {"body": "x", "text": "3"}])
    src = data.JsonlSource(p)
    assert src.domain == "web" and len(src) == 3
    assert [src[i] for i in range(3)] == ["one", "two ü", "3"]
    clone = pickle.loads(pickle.dumps(src))
    assert [clone[i] for i in range(3)] == ["one", "two ü", "3"]


def test_jsonl_text_field_and_blank_lines(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"body": "a"}, b"\n", {"body": "bb"}])
    src = data.JsonlSource(p, text_field="body")
    assert [src[0], src[1]] == ["a", "bb"]


@pytest.mark.parametrize("bad,reason", [
    (b'{"text": "ok"\n', "malformed JSON"),
    (b'{"text": "caf\xe9"}\n', "not valid UTF-8"),
    (b'{"title": "no text"}\n', "no field 'text'"),
    (b'{"text": 3}\n', "not a string"),
    (b'[1, 2]\n', "expected a JSON object"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad, reason):
    p = _jsonl(tmp_path / "code.jsonl", [{"text": "fine"}, bad, {"text": "fine too"}])
    with pytest.raises(DataError, match=rf"domain 'code': .*code\.jsonl:2: .*{reason}"):
        data.JsonlSource(p)
    src = data.JsonlSource(p, on_error="skip")
    assert len(src) == 2 and [src[0], src[1]] == ["fine", "fine too"]
    assert [line for _, line, _ in src.skipped] == [2] and reason in src.skipped[0][2]


def test_jsonl_zero_documents_after_filtering(tmp_path):
    p = _jsonl(tmp_path / "tiny.jsonl", [{"text": "ab"}, {"text": "c"}])
    with pytest.raises(DataError, match="domain 'tiny': zero documents after filtering"):
        data.JsonlSource(p, min_chars=5)
    p2 = _jsonl(tmp_path / "bad.jsonl", [b"nope\n"])
    with pytest.raises(DataError, match=r"domain 'bad': zero documents .*1 lines/records skipped"):
        data.JsonlSource(p2, on_error="skip")


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="domain 'web': JSONL file .*nope.jsonl"):
        data.JsonlSource(tmp_path / "nope.jsonl", domain="web")
    with pytest.raises(FileNotFoundError, match="data directory .*missing.* not found"):
        data.corpus_sources(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="domain 'code': text directory"):
        data.TextDirSource(tmp_path / "code_dir", domain="code")
    with pytest.raises(ValueError, match="on_error must be one of"):
        data.JsonlSource(tmp_path / "x.jsonl", on_error="ignore")


def test_text_dir_sources(tmp_path):
    for dom, docs in {"code": ["def f(): pass", "x = 1"], "prose": ["Call me Ishmael."]}.items():
        (tmp_path / dom / "sub").mkdir(parents=True)
        for i, t in enumerate(docs):
            (tmp_path / dom / ("sub" if i else "") / f"{i}.txt").write_text(t)
    (tmp_path / "code" / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match=r"domain 'code': .*bin\.txt: not valid UTF-8"):
        data.text_dir_sources(tmp_path)
    srcs = data.text_dir_sources(tmp_path, on_error="skip")
    assert list(srcs) == ["code", "prose"]
    assert sorted(srcs["code"][i] for i in range(len(srcs["code"]))) == ["def f(): pass", "x = 1"]
    assert len(srcs["code"].skipped) == 1
    assert pickle.loads(pickle.dumps(srcs["prose"]))[0] == "Call me Ishmael."


def test_array_record_source(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter
    path = str(tmp_path / "books.array_record")
    w = ArrayRecordWriter(path, "group_size:1")
    for rec in [b"first", "sécond".encode(), b"\xff bad", b"fourth"]:
        w.write(rec)
    w.close()
    src = data.ArrayRecordSource(path, domain="books")
    assert len(src) == 4 and src[1] == "sécond"
    with pytest.raises(DataError, match=r"domain 'books': .*books\.array_record record 2: not valid UTF-8"):
        src[2]
    with pytest.raises(DataError, match="record 2"):
        data.ArrayRecordSource(path, domain="books", validate=True)
    ok = data.ArrayRecordSource(path, domain="books", validate=True, on_error="skip")
    assert [ok[i] for i in range(len(ok))] == ["first", "sécond", "fourth"]
    assert pickle.loads(pickle.dumps(ok))[2] == "fourth"

    tpath = str(tmp_path / "toks.array_record")
    w = ArrayRecordWriter(tpath, "group_size:1")
    w.write(np.arange(5, dtype=np.int32).tobytes())
    w.close()
    toks = data.ArrayRecordSource(tpath, record_format="tokens")
    np.testing.assert_array_equal(toks[0], np.arange(5))


def test_tfds_mock_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    write_domains(tmp_path, num_docs=(12,))
    with tfds.testing.mock_data(num_examples=20):
        src = data.TfdsSource("lm1b", split="train", domain="news")
        assert len(src) == 20 and isinstance(src[0], str) and src[0]
        assert pickle.loads(pickle.dumps(src))[3] == src[3]
        with pytest.raises(DataError, match=r"domain 'news': tfds 'lm1b' records have no field 'body'"):
            data.TfdsSource("lm1b", split="train", domain="news", text_field="body")
        # a tfds domain and a JSONL domain in one run
        spec = data.DatasetSpec(domains=(
            data.DomainSpec(name="news", kind="tfds", path="lm1b", split="train"),
            data.DomainSpec(name="alpha", kind="jsonl", path=str(tmp_path / "alpha.jsonl"))))
        sampler = data.DomainSampler(spec.sources(), batch_size=8, seq_len=16, mode="per_domain")
        batch = next(sampler)
        assert batch["tokens"].shape == (8, 17)
        np.testing.assert_array_equal(batch["domain_counts"], [4, 4])
        news_rows = batch["tokens"][batch["domain_id"] == 0]
        assert set(news_rows.ravel().tolist()) <= set(range(256)) | {257}


def test_spec_mixes_kinds(tmp_path):
    write_domains(tmp_path / "c", num_docs=(5, 6))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hello")
    spec = data.DatasetSpec.from_dict({"domains": [
        {"name": "a", "kind": "jsonl", "path": str(tmp_path / "c" / "alpha.jsonl")},
        {"name": "t", "kind": "textdir", "path": str(tmp_path / "txt")},
    ]})
    srcs = spec.sources()
    assert list(srcs) == ["a", "t"] and len(srcs["a"]) == 5 and srcs["t"][0] == "hello"
    with pytest.raises(ValueError, match=r"domain #0 \('a'\): unknown key\(s\) \['txt_field'\]"):
        data.DatasetSpec.from_dict({"domains": [{"name": "a", "kind": "jsonl", "path": "x", "txt_field": "t"}]})
    with pytest.raises(ValueError, match="domain 'a': unknown source kind 'csv'"):
        data.DomainSpec(name="a", kind="csv", path="x")
    with pytest.raises(ValueError, match=r"duplicate domain names \['a'\]"):
        data.DatasetSpec(domains=(data.DomainSpec(name="a", kind="jsonl", path="x"),) * 2)
    assert list(data.resolve_sources(str(tmp_path / "c"))) == ["alpha", "beta"]


def test_shipped_corpus_sources():
    corpus = pytest.importorskip("mixjax.data.corpus")
    try:
        corpus.corpus_dir("mixpile-tiny")
    except FileNotFoundError:
        pytest.skip("mixpile-tiny not shipped yet")
    srcs = data.corpus_sources("mixpile-tiny")
    assert len(srcs) >= 2 and list(srcs) == sorted(srcs)
    for name, src in srcs.items():
        assert len(src) > 0 and isinstance(src[0], str), name


def test_corpus_subset_and_token_counts(tmp_path):
    root = write_domains(tmp_path / "c", num_docs=(10, 8, 6))
    srcs = data.corpus_sources(str(root), ["gamma", "alpha"])
    assert list(srcs) == ["gamma", "alpha"]
    with pytest.raises(DataError, match=r"unknown domain 'omega'; known: \['alpha', 'beta', 'gamma'\]"):
        data.corpus_sources(str(root), ["omega"])
    spec = data.DatasetSpec.from_dict({"corpus": str(root), "corpus_domains": ["beta"]})
    assert list(spec.sources()) == ["beta"]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['corpus_domain'\]"):
        data.DatasetSpec.from_dict({"corpus": str(root), "corpus_domain": ["beta"]})
    counts = data.token_counts(srcs, split=None)
    for name, src in srcs.items():   # byte tokens + one EOS per document
        assert counts[name] == sum(len(src[i].encode()) + 1 for i in range(len(src)))
