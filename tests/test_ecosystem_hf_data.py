"""Hugging Face datasets as domain sources: Parquet/JSONL/save_to_disk, a domain per file or per
column value, splits/packing/sampler guarantees, exact resume, data.corpus=DIR of Parquet files."""

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from mixjax import data  # noqa: E402
from mixjax.data import hf_sources  # noqa: E402
from mixjax.data import sources as src_lib  # noqa: E402
from mixjax.data import splits as splits_lib  # noqa: E402

from ecosystem_fixtures import WORDS, documents  # noqa: E402


@pytest.fixture(autouse=True)
def _local_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the test's own cache must hold the converted Arrow files
    yield
    assert any((tmp_path / "hf_cache").rglob("*.arrow"))


def write_parquet_dir(root, n=40):
    root.mkdir(parents=True, exist_ok=True)
    for d in WORDS:
        docs = documents(d, n)
        pq.write_table(pa.table({"id": [f"{d}-{i}" for i in range(n)], "text": docs}),
                       root / f"{d}.parquet", row_group_size=16)
    return root


def write_pile_like(path, n=30):
    """One file with every domain mixed, the domain in a nested column (like the Pile's meta)."""
    rows = [{"text": t, "meta": {"pile_set_name": d}} for d in WORDS for t in documents(d, n)]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return rows


def test_parquet_dir_matches_the_same_corpus_as_jsonl(tmp_path):
    pdir = write_parquet_dir(tmp_path / "pq")
    jdir = tmp_path / "jsonl"
    jdir.mkdir()
    for d in WORDS:
        with open(jdir / f"{d}.jsonl", "w") as fh:
            for i, t in enumerate(documents(d, 40)):
                fh.write(json.dumps({"id": f"{d}-{i}", "text": t}) + "\n")
    ps, js = data.corpus_sources(str(pdir)), data.corpus_sources(str(jdir))
    assert list(ps) == list(js) == sorted(WORDS)
    for d in ps:
        assert isinstance(ps[d], hf_sources.HFSource)
        assert [ps[d][i] for i in range(len(ps[d]))] == [js[d][i] for i in range(len(js[d]))]
        np.testing.assert_array_equal(ps[d].group_keys(), js[d].group_keys())
        for split in splits_lib.SPLITS:   # identical splits, hence identical packing and eval sets
            a, b = (splits_lib.split_source(x[d], split) for x in (ps, js))
            assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    ep = data.eval_arrays(ps, seq_len=32, num_sequences=4)
    ej = data.eval_arrays(js, seq_len=32, num_sequences=4)
    for d in ep:
        np.testing.assert_array_equal(ep[d], ej[d])
    assert set(data.corpus_sources(str(pdir)) ) == set(data.parquet_dir_sources(pdir))
    with pytest.raises(data.DataError, match="unknown domain.*'poetry'"):
        data.parquet_dir_sources(pdir, ["prose", "poetry"])


def test_domain_per_column_value_nested_and_save_to_disk(tmp_path):
    rows = write_pile_like(tmp_path / "pile.jsonl")
    spec = data.DatasetSpec.from_dict({"domains": [
        {"name": "pile", "kind": "hf", "path": str(tmp_path / "pile.jsonl"),
         "domain_field": "meta.pile_set_name"}]})
    srcs = spec.sources()
    assert list(srcs) == sorted(WORDS)
    for d, src in srcs.items():
        want = [r["text"] for r in rows if r["meta"]["pile_set_name"] == d]
        assert [src[i] for i in range(len(src))] == want          # file order within the domain
    # one value only, and a save_to_disk directory
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "pile.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    ds.save_to_disk(str(tmp_path / "saved"))
    one = data.DomainSpec(name="code", kind="hf", path=str(tmp_path / "saved"),
                          domain_field="meta.pile_set_name", domain_value="code").build()
    assert [one[i] for i in range(len(one))] == [srcs["code"][i] for i in range(len(srcs["code"]))]


def test_missing_text_column_and_unknown_value_are_clear(tmp_path):
    pq.write_table(pa.table({"content": ["a b c", "d e f"]}), tmp_path / "x.parquet")
    with pytest.raises(data.DataError, match="domain 'x'.*no column 'text'.*columns: \\['content'\\]"):
        data.DomainSpec(name="x", kind="hf", path=str(tmp_path / "x.parquet")).build()
    src = data.DomainSpec(name="x", kind="hf", path=str(tmp_path / "x.parquet"),
                          text_field="content").build()
    assert src[1] == "d e f"
    with pytest.raises(FileNotFoundError, match="domain 'y'.*nope.parquet"):
        data.DomainSpec(name="y", kind="hf", path=str(tmp_path / "nope.parquet")).build()
    write_pile_like(tmp_path / "pile.jsonl", n=3)
    with pytest.raises(data.DataError, match="no column 'meta.set_name'.*'meta' has no field"):
        data.hf_column_sources(str(tmp_path / "pile.jsonl"), "meta.set_name")


def test_sampler_over_hf_sources_resumes_exactly(tmp_path):
    srcs = data.corpus_sources(str(write_parquet_dir(tmp_path / "pq")))
    import pickle   # grain worker processes receive pickled sources
    copy = pickle.loads(pickle.dumps(srcs["code"]))
    assert [copy[i] for i in range(len(copy))] == [srcs["code"][i] for i in range(len(copy))]

    def sampler():
        return data.DomainSampler(srcs, batch_size=6, seq_len=16, seed=3, mode="stratified",
                                  tokenizer="byte")

    s = sampler()
    for _ in range(3):
        next(s)
    state = json.loads(json.dumps(s.get_state()))
    want = [next(s) for _ in range(4)]
    r = sampler()
    r.set_state(state)
    for w in want:
        got = next(r)
        np.testing.assert_array_equal(got["tokens"], w["tokens"])
        np.testing.assert_array_equal(got["domain_id"], w["domain_id"])
    # every row holds one domain's text only (packing never mixes domains)
    letters = {d: set("".join(WORDS[d]) + " ") for d in WORDS}
    names = list(srcs)
    for w in want:
        for row, d in zip(w["tokens"], w["domain_id"]):
            text = bytes(int(t) for t in row if t < 256).decode()
            assert set(text) <= letters[names[d]]

# Training on a Parquet corpus with an HF tokenizer from the CLI: tests/test_ecosystem_run.py.
