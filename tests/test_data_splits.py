import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixjax import data
from mixjax.data import splits
from mixjax.data.sources import DataError, ListSource


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**31), fv=st.floats(0, 0.3), ft=st.floats(0, 0.3))
def test_splits_partition_documents(n, seed, fv, ft):
    parts = splits.split_indices(n, seed=seed, domain="web", fractions={"validation": fv, "test": ft})
    allidx = np.concatenate([parts[s] for s in splits.SPLITS])
    # disjoint and covering: every document in exactly one split
    assert len(allidx) == n and len(np.unique(allidx)) == n
    for s in splits.SPLITS:
        for o in splits.SPLITS:
            if o != s:
                assert set(parts[s].tolist()).isdisjoint(parts[o].tolist())
    if n >= 3:
        assert len(parts["train"]) >= 1
        assert len(parts["validation"]) >= (1 if fv > 0 else 0)


def test_splits_deterministic_and_keyed():
    a = splits.split_indices(1000, seed=1, domain="web")
    b = splits.split_indices(1000, seed=1, domain="web")
    c = splits.split_indices(1000, seed=2, domain="web")
    d = splits.split_indices(1000, seed=1, domain="code")
    for s in splits.SPLITS:
        np.testing.assert_array_equal(a[s], b[s])
    assert not np.array_equal(a["validation"], c["validation"])
    assert not np.array_equal(a["validation"], d["validation"])
    assert len(a["validation"]) == 20 and len(a["test"]) == 20 and len(a["train"]) == 960


def test_split_sources_disjoint_documents():
    docs = [f"doc {i}" for i in range(200)]
    src = {"web": ListSource(docs, "web")}
    got = {s: {p[i] for i in range(len(p))}
           for s, p in ((s, data.split_sources(src, s, seed=5)["web"]) for s in splits.SPLITS)}
    assert set.union(*got.values()) == set(docs)
    assert sum(len(v) for v in got.values()) == len(docs)


def test_empty_split_and_bad_fractions():
    with pytest.raises(DataError, match="domain 'small': split 'validation' has zero documents"):
        splits.split_source(ListSource(["a", "b"], "small"), "validation")
    with pytest.raises(ValueError, match="unknown split"):
        splits.split_source(ListSource(["a"], "x"), "dev")
    with pytest.raises(ValueError, match="unknown split"):
        splits.split_sizes(10, {"valid": 0.1})
    with pytest.raises(ValueError, match="leave no training documents"):
        splits.split_sizes(3, {"validation": 0.5, "test": 0.4})


def test_parts_of_one_document_share_a_split(tmp_path):
    # 60 documents cut into 1-4 parts each ("doc#k"), plus lines without an id.
    import json
    rng = np.random.default_rng(0)
    lines, owner = [], []
    for d in range(60):
        for k in range(int(rng.integers(1, 5))):
            lines.append({"id": f"src:doc{d}#{k}", "text": f"doc {d} part {k}"})
            owner.append(d)
    for j in range(5):
        lines.append({"text": f"loose {j}"})
        owner.append(1000 + j)
    path = tmp_path / "web.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    src = data.JsonlSource(path, domain="web", group_field="id")
    where = {}
    for s in splits.SPLITS:
        for i in splits.split_source(src, s, seed=3, fractions={"validation": 0.1, "test": 0.1}).indices:
            assert where.setdefault(owner[i], s) == s, f"document {owner[i]} in two splits"
    assert set(where.values()) == set(splits.SPLITS)
    assert len(where) == 65  # ungrouped lines are their own groups


def test_shipped_corpus_splits_keep_document_parts_together():
    srcs = data.corpus_sources("mixpile-tiny")
    for name, src in srcs.items():
        keys = src.group_keys()
        assert keys is not None and len(keys) == len(src)
        seen = {}
        for s in splits.SPLITS:
            for k in splits.split_source(src, s, domain=name).group_keys().tolist():
                assert seen.setdefault(k, s) == s, f"domain {name}: a document spans two splits"
