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


# ---- floors -----------------------------------------------------------------------------

def _grouped(num_groups, parts_per_group, part_bytes, seed=0):
    """A grouped domain: ``num_groups`` sources, each cut into 1..parts_per_group parts."""
    rng = np.random.default_rng(seed)
    docs, groups = [], []
    for g in range(num_groups):
        for k in range(int(rng.integers(1, parts_per_group + 1))):
            docs.append("x" * int(rng.integers(part_bytes // 2, part_bytes + 1)))
            groups.append(g)
    return docs, np.asarray(groups, np.uint64)


@pytest.mark.parametrize("fractions", [{"validation": 0.0, "test": 0.0}, {"validation": 0.02, "test": 0.02},
                                       {"validation": 0.3, "test": 0.1}])
def test_floors_hold_whatever_the_fractions_and_groups_never_straddle(fractions):
    docs, groups = _grouped(200, 3, 1500)
    floors = splits.Floors(min_docs=16, min_bytes=16_384)
    idx = splits.split_indices(len(docs), seed=1, domain="d", fractions=fractions, groups=groups,
                               floors=floors, size_of=lambda i: len(docs[i]))
    units = {k: set(groups[v].tolist()) for k, v in idx.items()}
    for s in ("validation", "test"):
        assert len(units[s]) >= 16 and sum(len(docs[i]) for i in idx[s]) >= 16_384, s
        assert len(idx[s]) >= splits.split_sizes(len(docs), fractions)[s]  # never below the fraction
    assert not (units["train"] & units["validation"] or units["train"] & units["test"]
                or units["validation"] & units["test"])
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(docs)))


def test_floors_move_only_boundaries_of_the_same_ranking():
    """Without floors and with floors that are already met, the split is the old one."""
    docs, groups = _grouped(300, 2, 100)
    plain = splits.split_indices(len(docs), seed=0, domain="d", groups=groups)
    met = splits.split_indices(len(docs), seed=0, domain="d", groups=groups,
                               floors=splits.Floors(min_docs=1), size_of=lambda i: len(docs[i]))
    for s in splits.SPLITS:
        np.testing.assert_array_equal(plain[s], met[s])
    grown = splits.split_indices(len(docs), seed=0, domain="d", groups=groups,
                                 floors=splits.Floors(min_docs=40), size_of=lambda i: len(docs[i]))
    assert set(plain["validation"].tolist()) <= set(grown["validation"].tolist())


def test_floor_that_cannot_be_met_names_domain_and_numbers():
    docs, groups = _grouped(20, 1, 2000)
    with pytest.raises(splits.SplitFloorError, match=r"domain 'legal'.*>= 16 documents.*>= 16384 bytes"
                       r".*20 units.*data.split_min_docs"):
        splits.split_indices(len(docs), seed=0, domain="legal", groups=groups,
                             floors=splits.Floors(16, 16_384), size_of=lambda i: len(docs[i]))


def test_smaller_floor_from_config_is_logged(capsys):
    src = ListSource([f"doc {i} " * 20 for i in range(60)], "web")
    src.split_floors = splits.Floors(16, 2000)
    splits.set_floors({"web": src}, splits.Floors(4, 0), reason=" by data.split_min_docs")
    assert "domain 'web': split floor lowered from 16 documents / 2000 bytes to 4 / 0" in capsys.readouterr().err
    assert len(splits.split_source(src, "validation")) >= 4


@pytest.mark.parametrize("name", ["mixpile", "mixpile-full"])
def test_built_corpora_recipes_meet_their_floors(name):
    """No download: a synthetic domain shaped like the recipe's output (cap bytes of parts
    <= max_doc_bytes, sizes log-uniform from 256 B, 1-2 parts per source as the byte-balanced
    draw from thousands of source files gives) meets 16 units / 128 KB per evaluation split and
    keeps most of it (> 70% here) for training. (Measured on a real `mixjax data build mixpile`: every domain
    met the floors with 92-93% of its bytes in training; docs/data_corpus.md.)"""
    from mixjax.data.corpus.recipes import CORPORA
    recipe = CORPORA[name]
    assert recipe.split_floors == {"min_docs": 16, "min_bytes": 131_072}
    cap = recipe.cap_bytes or 11_000_000     # mixpile-full: ~11 MB per domain
    rng = np.random.default_rng(2)
    docs, groups, total, g = [], [], 0, 0
    while total < cap:
        for _ in range(int(rng.integers(1, 3))):
            n = int(np.exp(rng.uniform(np.log(256), np.log(recipe.max_doc_bytes))))
            docs.append(n)
            groups.append(g)
            total += n
        g += 1
    groups = np.asarray(groups, np.uint64)
    idx = splits.split_indices(len(docs), seed=0, domain="d", groups=groups,
                               floors=splits.Floors(**recipe.split_floors), size_of=lambda i: docs[i])
    for s in ("validation", "test"):
        assert len(set(groups[idx[s]].tolist())) >= 16 and sum(docs[i] for i in idx[s]) >= 131_072
    assert sum(docs[i] for i in idx["train"]) > 0.7 * total


def test_config_keys_reach_the_split(tmp_path):
    from mixjax import config as config_lib
    from mixjax.train.data import _all_sources, split_fractions
    cfg = config_lib.Config()
    config_lib.apply_override(cfg, "data.split_fractions={'validation': 0.1, 'test': 0.05}")
    config_lib.apply_override(cfg, "data.split_min_docs=20")
    config_lib.validate(cfg)
    srcs = _all_sources(cfg)
    assert split_fractions(cfg) == {"validation": 0.1, "test": 0.05}
    assert all(s.split_floors == splits.Floors(20, 16_384) for s in srcs.values())
    config_lib.apply_override(cfg, "data.split_fractions={'valid': 0.1}")
    with pytest.raises(config_lib.ConfigError, match="data.split_fractions"):
        config_lib.validate(cfg)
