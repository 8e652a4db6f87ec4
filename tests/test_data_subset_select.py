"""Set-level selection (mixjax.data.subset_select, ``mixjax data select --method``): GIO and
INGENIOUS against plain-numpy restatements, the embedding cache, the corpus check of a complete
selection file, and the command's bad input (one line, exit 2, nothing written)."""

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mixjax.data import selection, subset_select
from mixjax.data.sources import DataError


def _naive_fl(emb, budget):
    sim = (1 + emb @ emb.T) / 2
    best, out = np.zeros(len(emb)), []
    for _ in range(budget):
        gains = np.array([np.maximum(sim[:, j] - best, 0).sum() if j not in out else -np.inf
                          for j in range(len(emb))])
        j = int(np.argmax(gains))
        out.append(j)
        best = np.maximum(best, sim[:, j])
    return out


def _kl(x, y, k):
    """Wang-Kulkarni-Verdu k-NN estimate, restated with scipy distances."""
    n, d = x.shape
    m = len(y)
    dxx = cdist(x, x)
    np.fill_diagonal(dxx, np.inf)
    rho = np.sort(dxx, 1)[:, min(k, n - 1) - 1]
    nu = np.sort(cdist(x, y), 1)[:, min(k, m) - 1]
    return d * np.mean(np.log(nu + 1e-8) - np.log(rho + 1e-8)) + math.log(m / (n - 1))


def _naive_gio(c, x, budget, k, stop):
    chosen, kls, prev = [], [], np.inf
    for m in range(1, budget + 1):
        scores = [(_kl(x, c[chosen + [j]], k), j) for j in range(len(c)) if j not in chosen]
        s, j = min(scores)
        if stop and m > k and s > prev:
            break
        chosen.append(j)
        kls.append(s)
        prev = s
    return chosen, kls


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_facility_location_lazy_greedy_is_plain_greedy():
    emb = _unit(np.random.default_rng(0).normal(size=(40, 6)))
    assert subset_select.facility_location(emb, 9) == _naive_fl(emb, 9)


@pytest.mark.parametrize("k, stop", [(1, True), (3, False)])
def test_gio_is_greedy_knn_kl_and_moves_toward_the_target(k, stop):
    rng = np.random.default_rng(1)
    far = rng.normal(size=(20, 4)) + 4.0            # candidates away from the target
    near = rng.normal(size=(10, 4))                  # candidates like the target
    cands = np.concatenate([far, near])
    target = rng.normal(size=(12, 4))
    res = subset_select.gio(cands, target, 8, k=k, stop_on_increase=stop)
    order, kls = _naive_gio(cands, target, 8, k, stop)
    assert res.order == order
    np.testing.assert_allclose(res.kl, kls, rtol=1e-9)
    assert sum(j >= 20 for j in res.order) >= 0.75 * len(res.order)
    np.testing.assert_allclose(subset_select.knn_kl(target, cands[res.order], k), res.kl[-1])


def test_embeddings_are_cached_by_content_hash_and_config(tmp_path):
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    hashes = [selection.content_hash(d) for d in docs]
    e1, n1 = subset_select.cached_embed(docs, hashes, tmp_path)
    e2, n2 = subset_select.cached_embed(docs[::-1], hashes[::-1], tmp_path)
    assert (n1, n2) == (3, 0)
    np.testing.assert_array_equal(e2, e1[::-1])
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, rtol=1e-5)
    other = {**subset_select.EMBEDDER, "ngram": 4}
    _, n3 = subset_select.cached_embed(docs, hashes, tmp_path, other)
    assert n3 == 3 and len(list(tmp_path.glob("emb-*.npz"))) == 2


def _corpus(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    words = {"prose": ["river", "garden", "morning", "letter", "window", "story"],
             "code": ["def", "return", "self", "import", "lambda", "print("]}
    for dom, vocab in words.items():
        with open(root / f"{dom}.jsonl", "w") as f:
            for i in range(30):
                text = " ".join(rng.choice(vocab, 12 + i % 7)) + f" {i}"
                f.write(json.dumps({"text": text}) + "\n")
    return words


def test_data_select_method_writes_a_complete_file_and_refuses_another_corpus(tmp_path, capsys):
    from mixjax.cli import main
    from mixjax.data.spec import resolve_sources
    corpus = tmp_path / "corpus"
    words = _corpus(corpus)
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": " ".join(words["code"][::-1]) + f" t{i}"}) + "\n"
                              for i in range(4)))
    out, cache = tmp_path / "gio.jsonl", tmp_path / "cache"
    argv = ["data", "select", str(corpus), "--out", str(out), "--method", "gio", "--budget", "0.2",
            "--target", str(target), "--cache-dir", str(cache)]
    assert main(argv) == 0
    assert "60 embedded, 0 from the cache" in capsys.readouterr().out
    sel = selection.load(out)
    assert sel.complete and len(sel.weights) == 60
    sources = resolve_sources(str(corpus))
    picked = {d: sum(sel.weight(s[i]) for i in range(len(s))) for d, s in sources.items()}
    assert picked["code"] > picked["prose"]               # toward the code-like target
    selection.check_corpus(sources, sel)
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first  # deterministic, from the cache
    assert "0 embedded, 60 from the cache" in capsys.readouterr().out

    assert main(["data", "select", str(corpus), "--out", str(tmp_path / "fl.jsonl"), "--method",
                 "ingenious", "--budget", "0.1", "--cache-dir", str(cache)]) == 0
    fl = selection.load(tmp_path / "fl.jsonl")
    assert sum(fl.weights.values()) == 6                  # ceil(0.1 * 30) per domain

    with open(corpus / "code.jsonl", "a") as f:           # the corpus changed
        f.write(json.dumps({"text": "a new document"}) + "\n")
    with pytest.raises(DataError, match=r"does not match the corpus: 1 of the 31 .*'code'"):
        selection.check_corpus(resolve_sources(str(corpus)), sel)


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0"], "--budget must be a fraction in (0, 1], got '0'"),
    (["--budget", "1.5"], "--budget must be a fraction in (0, 1], got '1.5'"),
    (["--budget", "x"], "--budget must be a fraction in (0, 1], got 'x'"),
    (["--budget", "0.5", "--target", "EMPTY"], "is empty"),
    (["--budget", "0.5", "--target", "MISSING"], "does not exist"),
    (["--budget", "0.5"], "--method gio needs --target"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, extra, message):
    from mixjax.cli import main
    (tmp_path / "empty.jsonl").write_text("\n")
    extra = [str(tmp_path / "empty.jsonl") if a == "EMPTY" else
             str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in extra]
    out = tmp_path / "sel.jsonl"
    # the corpus does not exist either: the arguments are checked before it is read
    assert main(["data", "select", str(tmp_path / "nope"), "--out", str(out), "--method", "gio",
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_coreset_scores_representatives_and_propagates():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(4, 3)) * 10
    emb = np.concatenate([c + rng.normal(size=(6, 3)) * 0.1 for c in centres])
    calls = []

    def score(i):
        calls.append(i)
        return float(i)

    w, labels, reps = subset_select.coreset_propagate(emb, 4, score)
    assert sorted(calls) == sorted(reps.tolist()) and len(calls) == 4    # scored 4 of 24
    assert len(set(labels[:6])) == 1 and len(set(labels)) == 4         # the 4 clumps
    for j, r in enumerate(reps):
        members = np.flatnonzero(labels == j)
        assert labels[r] == j and np.all(w[members] == float(r))
        centre = emb[members].mean(0)
        assert r == members[np.argmin(((emb[members] - centre) ** 2).sum(1))]
    w_all, _, _ = subset_select.coreset_propagate(emb, 24, float)     # budget 1: every doc
    np.testing.assert_array_equal(w_all, np.arange(24.0))


def test_data_select_coreset_writes_propagated_weights(tmp_path, capsys):
    from mixjax.cli import main
    from mixjax.data.spec import resolve_sources
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    out = tmp_path / "core.jsonl"
    assert main(["data", "select", str(corpus), "--out", str(out), "--method", "coreset",
                 "--budget", "0.2", "--scorer", "length", "--arg", "min_chars=80",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    assert "code 6, prose 6" in capsys.readouterr().out        # ceil(0.2 * 30) scored each
    sel = selection.load(out)
    assert sel.complete and sel.scorer == "coreset(budget=0.2, scorer=length(min_chars=80))"
    assert set(sel.weights.values()) <= {0.0, 1.0}
    selection.check_corpus(resolve_sources(str(corpus)), sel)


@pytest.mark.slow
def test_selection_evidence_on_mixpile_tiny():
    """docs/selection.md's selection rows, 3 seeds: GIO's selection leans toward the target
    domain, INGENIOUS covers better than random subsets, coreset propagation beats a constant."""
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import selection_evidence as ev
    seeds = [0, 1, 2]
    rows, _ = ev.gio_rows(seeds, domains=("math",))
    (ing,), _ = ev.ingenious_rows(seeds)
    (core,) = ev.coreset_rows(seeds)
    for row in (rows[0], ing, core):
        diff = row.rsplit("|", 2)[-2].strip()          # "+m ± h": the interval excludes 0
        m, h = (float(x) for x in diff.split(" ± "))
        assert m - h > 0, row
