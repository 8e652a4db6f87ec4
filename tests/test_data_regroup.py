"""Regroup (mixjax.data.regroup, ``mixjax data regroup``): k-means clusters as new domains."""

import json

import numpy as np
import pytest

from mixjax.data import regroup
from mixjax.data.sources import DataError

# Three latent topics, each with its own vocabulary; every given domain mixes two of them,
# so the domains a run is given are not the semantic groups.
TOPICS = {
    "space": "orbit planet rocket comet galaxy nebula telescope asteroid".split(),
    "cook": "flour butter oven recipe simmer garlic pepper dough".split(),
    "law": "statute court plaintiff appeal verdict clause tenant lease".split(),
}
MIX = {"web": ("space", "cook"), "books": ("cook", "law"), "forum": ("law", "space")}


def _corpus(root, docs_per_topic=12, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for dom, topics in MIX.items():
        with open(root / f"{dom}.jsonl", "w") as fh:
            for i in range(2 * docs_per_topic):
                topic = topics[i % 2]
                words = rng.choice(TOPICS[topic], size=int(rng.integers(8, 30)))
                # documents 0 and 1 of each domain are two parts of one document (same topic)
                doc_id = f"{dom}-0#{i}" if i in (0, 2) else f"{dom}-{i}"
                fh.write(json.dumps({"id": doc_id, "source": f"{dom}-src", "text": " ".join(words)}) + "\n")
                truth[doc_id] = topic
    return root, truth


def _read(out):
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(out.glob("*.jsonl"))}


def test_regroup_recovers_topics_that_cut_across_domains_and_a_run_reads_them(tmp_path):
    from mixjax.cli import main
    corpus, truth = _corpus(tmp_path / "corpus")
    out = tmp_path / "rg"
    assert main(["data", "regroup", str(corpus), "--k", "3", "--out", str(out)]) == 0
    clusters = _read(out)
    assert sorted(clusters) == ["c00", "c01", "c02"]
    # a partition of every document, each cluster one topic, each spanning two given domains
    ids = [r["id"] for recs in clusters.values() for r in recs]
    assert sorted(ids) == sorted(truth)
    for name, recs in clusters.items():
        assert len({truth[r["id"]] for r in recs}) == 1
        assert len({r["original_domain"] for r in recs}) == 2
        assert all(r["domain"] == name and r["source"].endswith("-src") for r in recs)
    info = json.loads((out / "regroup.json").read_text())
    assert info["documents"] == len(truth) and info["units"] == len(truth) - 3
    assert all(set(c["top_terms"]) <= set(sum(TOPICS.values(), [])) for c in info["clusters"].values())
    # the spec is a dataset spec a run builds its domains and splits from (ids group parts)
    from mixjax import config as config_lib
    from mixjax.train.data import _all_sources
    cfg = config_lib.Config()
    cfg.data.spec = str(out / "spec.json")
    sources = _all_sources(cfg)
    assert sorted(sources) == sorted(clusters)
    assert all(len(sources[n]) == len(clusters[n]) for n in clusters)
    assert all(sources[n].group_keys() is not None for n in clusters)
    # deterministic: the same input and options give the same bytes; SVD route works too
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["data", "regroup", str(corpus), "--k", "3", "--out", str(out), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["data", "regroup", str(corpus), "--k", "3", "--out", str(tmp_path / "svd"),
                 "--svd", "4"]) == 0
    for recs in _read(tmp_path / "svd").values():
        assert len({truth[r["id"]] for r in recs}) == 1


def test_parts_of_one_document_share_a_cluster():
    from mixjax.data.sources import ListSource

    class Parts(ListSource):        # a source whose group keys join documents 0 and 1
        def group_keys(self):
            return np.array([7, 7, 8, 9], np.uint64)

    docs = ["orbit planet rocket", "flour butter oven", "orbit comet planet", "butter dough oven"]
    src = {"a": Parts(docs, domain="a")}
    records = [[regroup.record(src["a"], i) for i in range(4)]]
    unit, n = regroup._units(src, records)
    assert n == 3 and unit[0] == unit[1]
    opts = regroup.Options(k=2, min_df=1)
    x, _, _ = regroup.embed(docs, unit, n, opts)
    labels = regroup.cluster(x, opts)[unit]
    assert labels[0] == labels[1]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from mixjax.cli import main
    corpus, truth = _corpus(tmp_path / "corpus", docs_per_topic=2)
    units = len(truth) - 3
    cases = [(["--k", "1"], "--k must be >= 2"),
             (["--k", str(units + 1)], f"exceeds the {units} documents"),
             ([], None)]
    for extra, msg in cases[:2]:
        assert main(["data", "regroup", str(corpus), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: regroup: ") and msg in err and "\n" not in err
    assert main(["data", "regroup", str(tmp_path / "missing"), "--k", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()          # nothing written before the checks
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("")
    assert main(["data", "regroup", str(corpus), "--k", "2", "--out", str(tmp_path / "full")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "regroup", str(corpus), "--k", "2", "--out", str(corpus),
                 "--overwrite"]) == 2
    assert "input file" in capsys.readouterr().err
    with pytest.raises(DataError, match="--svd"):
        regroup.Options(k=2, svd=-1).check(10)
