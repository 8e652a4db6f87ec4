"""Domain2Vec (mixjax.search.domain2vec, ``mixjax search domain2vec``): meta-domain vectors and
the mixture whose vector best aligns with the target's."""

import json

import numpy as np
import pytest

from mixjax.search import domain2vec

TOPICS = {   # fine-grained sources with their own vocabularies
    "astro": "orbit planet rocket comet galaxy nebula telescope asteroid".split(),
    "cook": "flour butter oven recipe simmer garlic pepper dough".split(),
    "law": "statute court plaintiff appeal verdict clause tenant lease".split(),
}
# training domains: known mixtures of the sources (columns of a nonsingular V)
MIX = {"web": (6, 2, 0), "books": (0, 6, 2), "forum": (2, 0, 6)}
W_TRUE = np.array([0.5, 0.3, 0.2])


def _write(root, name, counts, rng, tag):
    with open(root / f"{name}.jsonl", "w") as fh:
        n = 0
        for topic, c in zip(TOPICS, counts):
            for _ in range(c):
                words = rng.choice(TOPICS[topic], size=int(rng.integers(10, 25)))
                fh.write(json.dumps({"id": f"{tag}-{n}", "source": topic,
                                     "text": " ".join(words)}) + "\n")
                n += 1


def _corpus(root, scale=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, counts in MIX.items():
        _write(root, name, [scale * c for c in counts], rng, name)
    # a held-out domain whose source composition is V @ W_TRUE (V's columns: the domains')
    v = np.array([np.array(c) / sum(c) for c in MIX.values()]).T
    target = v @ W_TRUE
    _write(root, "target", np.round(target * 40 * scale).astype(int), rng, "target")
    return root


def test_solve_recovers_a_mixture_under_both_distances():
    rng = np.random.default_rng(1)
    v = rng.dirichlet(np.ones(6), size=4).T          # 6 meta-domains x 4 domains
    w = np.array([0.1, 0.4, 0.0, 0.5])
    for dist in domain2vec.DISTANCES:
        np.testing.assert_allclose(domain2vec.solve(v, v @ w, dist), w, atol=2e-3)


def test_cli_recovers_a_known_mixture_for_a_held_out_target(tmp_path, capsys):
    from mixjax.cli import main
    corpus = _corpus(tmp_path / "c")
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from mixjax.config import Config\n\ndef get_config():\n"
                   f"    c = Config(name='d2v')\n    c.data.corpus = {str(corpus)!r}\n"
                   "    c.data.domains = ('web', 'books', 'forum')\n    return c\n\n"
                   "def get_search():\n    return {'target': 'target'}\n")
    out = tmp_path / "out"
    assert main(["search", "domain2vec", str(cfg), "--out", str(out), "--docs", "400"]) == 0
    rec = json.loads((out / "weights.json").read_text())
    assert rec["method"] == "domain2vec" and rec["domains"] == ["web", "books", "forum"]
    got = np.array([rec["weights_by_domain"][d] for d in MIX])
    np.testing.assert_allclose(got, W_TRUE, atol=0.05)
    info = json.loads((out / "domain2vec.json").read_text())
    assert info["meta_domains"] == sorted(TOPICS)
    assert info["classifier_validation_accuracy"] > 0.95
    assert info["distance_found"] < info["distance_uniform"]
    assert "mixing.name=manual" in rec["use"]
    # bad input: one line, exit 2
    capsys.readouterr()
    for extra, msg in [(["--target", "nope"], "unknown target domain"),
                       (["--distance", "cos"], "distance must be one of"),
                       (["--meta-domains", "x"], "--meta-domains")]:
        assert main(["search", "domain2vec", str(cfg), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err
    assert main(["search", "domain2vec", str(tmp_path / "missing.py")]) == 2
    with pytest.raises(domain2vec.Domain2VecError, match="meta_domains"):
        domain2vec.run({}, ["a", "b"], domain2vec.Settings(meta_domains=1))
