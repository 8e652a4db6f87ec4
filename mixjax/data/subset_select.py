"""Set-level data selection in an embedding space: GIO and INGENIOUS (``mixjax data select --method``).

Unlike a per-document scorer (:mod:`mixjax.data.selection`), these choose a *subset* of the
corpus jointly; the result is a selection file (weight 1 for a chosen document, 0 otherwise;
``data.selection.mode = "drop"``) listing every document of the corpus, with ``complete: true``
and the corpus checksum in its header, so a run over another corpus is refused
(:func:`mixjax.data.selection.check_corpus`).

**Embedding** (:func:`embed`): character n-grams (n = 3, lower-cased) hashed into 2^14 counts
(scikit-learn's ``HashingVectorizer``, l2-normalised), times a fixed Gaussian projection to 64
dimensions (seed 0), l2-normalised. Deterministic, model-free, about 1 s per MB of text on one
core. Embeddings are cached per document under ``cache_dir`` keyed by the document's content
hash and the embedder's configuration (``emb-<sha256(config)[:16]>.npz``): a second selection
with the same embedder reads them back instead of recomputing.

**GIO** (Everaert & Potts, "GIO: Gradient Information Optimization for Training Dataset
Selection", ICLR 2024, arXiv 2306.11670; reference code ``daeveraert/gradient-information-
optimization`` ``src/GIO/GIOKL.py``): grow a set S from the candidates to minimise the k-NN
estimate of KL(target || S) (Wang, Kulkarni & Verdu 2009)::

    KL(X || S) ~ d/n sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1))

``rho_k(i)``: distance of target x_i to its k-th nearest other target; ``nu_k(i)``: to its k-th
nearest point of S (the min(k, m)-th while m < k); n targets, m = |S|, d the dimension. Each
iteration adds the candidate with the lowest resulting estimate; it stops at the budget or, as
the reference's default ``stop_criterion="increase"``, when the best addition would raise the
estimate (checked once m > k: before S has k points the estimate reads a nearer neighbour).
Choices: the reference finds a continuous point by gradient descent on the estimate
and takes the candidate nearest to it (for corpora of millions, after k-means quantisation);
here every candidate is scored exactly (O(n x N) per iteration; mixpile-tiny's 3k documents
need no quantisation). The reference's estimator averages the target-to-S distance over *all*
of S (``_knn(..., k=m, last_only=False)``), which makes its gradient independent of S; the
k-th-neighbour form above is the estimator the paper states (its eq. 2).

**INGENIOUS** (Renduchintala et al., "INGENIOUS: Using Informative Data Subsets for Efficient
Pre-Training of Language Models", EMNLP Findings 2023, arXiv 2305.06677): per domain
(the paper's partitions), a budget of ceil(f N_d) documents maximising the facility-location
function ``F(S) = sum_i max_{j in S} s_ij`` with ``s = (1 + cos) / 2`` over the embeddings, by
lazy greedy (Minoux 1978; exact: the same set as plain greedy). The paper uses the
``submodlib`` library; ``apricot-select`` (the kept-library route) was not installed: its last
release (0.6.1, 2021) pins a numba toolchain for a 30-line algorithm whose lazy and plain
greedy agree in tests/test_data_subset_select.py. Left out: the paper's re-selection every few
epochs with a model's own embeddings and its importance re-sampling of the subset.

**Coreset reweighting** (after Jafari, Zhang, Zhang & Liu, "The Power of Few: Accelerating and
Enhancing Data Reweighting with Coreset Selection", ICASSP 2024, arXiv 2403.12166; no reference
code was available to read, so this follows the paper's summary: compute the expensive weights on
a small coreset only, then give every other example the weight of its coreset point): per domain,
k-means (scikit-learn, ceil(f N_d) clusters, seed 0) over the embeddings; each cluster's member
nearest its centroid is scored by a built-in per-document scorer (``--scorer``; the paper's
meta-learned weights are out of scope), and every member of the cluster gets that weight. The
scorer runs ceil(f N) times instead of N. Use the file with ``mode = "resample"`` or ``"weight"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from mixjax.data.sources import DataError, DomainSource

EMBEDDER = {"kind": "char-ngram-hash-rp", "ngram": 3, "features": 1 << 14, "dim": 64, "seed": 0,
            "version": 1}
METHODS = ("gio", "ingenious", "coreset")


# -- embeddings, cached by content hash + embedder config -------------------------------------------
def _text(doc: Any) -> str:
    return " ".join(map(str, np.asarray(doc).reshape(-1))) if isinstance(doc, np.ndarray) \
        else str(doc)


def embed(docs: Sequence[Any], config: Mapping[str, Any] = EMBEDDER) -> np.ndarray:
    """f32[N, dim]: unit-norm embeddings of ``docs`` (see the module docstring)."""
    from sklearn.feature_extraction.text import HashingVectorizer
    n = int(config["ngram"])
    vec = HashingVectorizer(analyzer="char", ngram_range=(n, n), n_features=int(config["features"]),
                            alternate_sign=False, norm="l2", lowercase=True)
    counts = vec.transform([_text(d) for d in docs])
    proj = np.random.default_rng(int(config["seed"])).standard_normal(
        (int(config["features"]), int(config["dim"]))) / math.sqrt(int(config["dim"]))
    e = np.asarray(counts @ proj, np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return (e / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def config_key(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:16]


def cached_embed(docs: Sequence[Any], hashes: Sequence[str], cache_dir: str | pathlib.Path | None,
                 config: Mapping[str, Any] = EMBEDDER) -> tuple[np.ndarray, int]:
    """``(embeddings, number computed)``: documents already in the cache (same content hash,
    same embedder config) are read back, the rest computed and added."""
    if cache_dir is None:
        return embed(docs, config), len(docs)
    path = pathlib.Path(cache_dir) / f"emb-{config_key(config)}.npz"
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            known = dict(zip(z["hashes"].tolist(), z["emb"]))
    missing = [i for i, h in enumerate(hashes) if h not in known]
    if missing:
        fresh = embed([docs[i] for i in missing], config)
        for i, e in zip(missing, fresh):
            known[hashes[i]] = e
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(known)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hashes=np.asarray(keys), emb=np.stack([known[h] for h in keys]))
        tmp.replace(path)
    return np.stack([known[h] for h in hashes]), len(missing)


# -- GIO ------------------------------------------------------------------------------------------
def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def knn_kl(target: np.ndarray, selected: np.ndarray, k: int = 1, eps: float = 1e-8) -> float:
    """The k-NN estimate of KL(target || selected) (module docstring)."""
    x, y = np.asarray(target, np.float64), np.asarray(selected, np.float64)
    n, d = x.shape
    m = y.shape[0]
    kx = min(k, n - 1)
    dxx = _dist(x, x)
    np.fill_diagonal(dxx, np.inf)
    rho = np.sort(dxx, axis=1)[:, kx - 1]
    nu = np.sort(_dist(x, y), axis=1)[:, min(k, m) - 1]
    return float(d * np.mean(np.log(nu + eps) - np.log(rho + eps)) + math.log(m / (n - 1)))


@dataclasses.dataclass
class GIOResult:
    order: list[int]                 # candidate indices in the order chosen
    kl: list[float]                  # the estimate after each addition


def gio(candidates: np.ndarray, target: np.ndarray, budget: int, *, k: int = 1,
        stop_on_increase: bool = True, eps: float = 1e-8) -> GIOResult:
    """Greedy KL(target || S) minimisation over ``candidates`` (module docstring)."""
    x, c = np.asarray(target, np.float64), np.asarray(candidates, np.float64)
    n, d = x.shape
    if n < 2:
        raise DataError(f"GIO needs at least 2 target documents, got {n}")
    dxx = _dist(x, x)
    np.fill_diagonal(dxx, np.inf)
    log_rho = np.log(np.sort(dxx, axis=1)[:, min(k, n - 1) - 1] + eps)
    dxc = _dist(x, c)                                   # [n, N]
    top = np.full((n, k), np.inf)                       # k smallest distances to S, sorted
    free = np.ones(c.shape[0], bool)
    order, kl = [], []
    prev = np.inf
    for m in range(1, min(budget, c.shape[0]) + 1):
        j = min(k, m) - 1                               # the neighbour the estimate reads
        below = top[:, j - 1:j] if j > 0 else np.full((n, 1), -np.inf)
        nu = np.where(dxc < top[:, j:j + 1], np.maximum(dxc, below), top[:, j:j + 1])
        score = d * np.mean(np.log(nu + eps) - log_rho[:, None], axis=0) + math.log(m / (n - 1))
        score = np.where(free, score, np.inf)
        best = int(np.argmin(score))                    # ties: the lowest index
        if stop_on_increase and m > k and score[best] > prev:   # defined once m >= k
            break
        prev = float(score[best])
        order.append(best)
        kl.append(prev)
        free[best] = False
        top = np.sort(np.concatenate([top, dxc[:, best:best + 1]], axis=1), axis=1)[:, :k]
    return GIOResult(order, kl)


# -- INGENIOUS: facility location, lazy greedy -----------------------------------------------------
def facility_location(emb: np.ndarray, budget: int) -> list[int]:
    """Indices maximising ``sum_i max_{j in S} (1 + cos_ij) / 2``, by lazy greedy (ties: the
    lowest index, as plain greedy's argmax)."""
    e = np.asarray(emb, np.float64)
    sim = (1.0 + e @ e.T) / 2.0
    n = sim.shape[0]
    best = np.zeros(n)                                   # max similarity to S so far
    heap = [(-float(sim[:, j].sum()), j) for j in range(n)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < min(budget, n):
        _, j = heapq.heappop(heap)
        gain = float(np.maximum(sim[:, j] - best, 0.0).sum())
        if heap and (-gain, j) > heap[0]:               # a stale bound: re-queue and retry
            heapq.heappush(heap, (-gain, j))
            continue
        chosen.append(j)
        best = np.maximum(best, sim[:, j])
    return chosen


# -- coreset reweighting: score a few, propagate ----------------------------------------------------
def coreset_propagate(emb: np.ndarray, budget: int, score_fn, *, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights f64[N], labels i[N], representatives i[C])``: k-means (scikit-learn, C =
    ``budget`` clusters, fixed seed) over ``emb``; each cluster's representative is its member
    nearest the centroid (ties: the lowest index); ``score_fn(i)`` is called once per
    representative and every member gets its representative's weight."""
    from sklearn.cluster import KMeans
    e = np.asarray(emb, np.float64)
    c = min(budget, len(e))
    if c >= len(e):
        labels, reps = np.arange(len(e)), np.arange(len(e))
    else:
        km = KMeans(n_clusters=c, n_init=1, random_state=seed).fit(e)
        labels = km.labels_
        reps = np.empty(c, np.int64)
        for j in range(c):
            members = np.flatnonzero(labels == j)
            d = ((e[members] - km.cluster_centers_[j]) ** 2).sum(1)
            reps[j] = members[int(np.argmin(d))]
    rep_w = np.asarray([float(score_fn(int(r))) for r in reps])
    return rep_w[labels], labels, reps


# -- the command's driver ----------------------------------------------------------------------------
def check_budget(budget: Any) -> float:
    try:
        f = float(budget)
    except (TypeError, ValueError):
        f = float("nan")
    if not (0 < f <= 1):
        raise DataError(f"--budget must be a fraction in (0, 1], got {budget!r}")
    return f


def read_target(path: str | pathlib.Path) -> list[str]:
    """The documents of a target set: a .jsonl file of ``{"text": ...}`` lines or a directory of
    them; an empty set is an error naming the path."""
    p = pathlib.Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"target set {str(p)!r} does not exist (want a .jsonl file or a "
                                "directory of them)")
    docs = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    docs.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{f}:{n}: want a JSON line with a \"text\" field") from None
    if not docs:
        raise DataError(f"target set {str(p)!r} is empty")
    return docs


def select_subset(sources: Mapping[str, DomainSource], method: str, budget: float, *,
                  target: Sequence[str] | None = None, cache_dir: str | None = None,
                  k: int = 1, scorer=None) -> tuple[dict[str, float], dict[str, Any]]:
    """``({content hash: weight} for every document, info)`` for ``method``: 1 or 0 for gio and
    ingenious; for coreset, the weight ``scorer(doc)`` of the document's cluster representative."""
    from mixjax.data.selection import corpus_documents
    if method not in METHODS:
        raise KeyError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")
    docs, hashes, domains = corpus_documents(sources)
    emb, computed = cached_embed(docs, hashes, cache_dir)
    domains_arr = np.asarray(domains)
    chosen: set[int] = set()
    info: dict[str, Any] = {"method": method, "budget": budget, "embedder": dict(EMBEDDER),
                            "embedded": computed, "cached": len(docs) - computed}
    if method == "gio":
        if not target:
            raise DataError("GIO needs a target set (--target)")
        t_emb = embed(list(target))
        res = gio(emb, t_emb, max(1, math.ceil(budget * len(docs))), k=k)
        chosen = set(res.order)
        info.update(k=k, target_documents=len(target), kl_first=res.kl[0] if res.kl else None,
                    kl_last=res.kl[-1] if res.kl else None)
    elif method == "ingenious":
        for name in sources:
            idx = np.flatnonzero(domains_arr == name)
            pick = facility_location(emb[idx], max(1, math.ceil(budget * len(idx))))
            chosen.update(int(idx[j]) for j in pick)
    else:
        if scorer is None:
            raise DataError("coreset reweighting needs a scorer (--scorer)")
        value = np.zeros(len(docs))
        scored = 0
        for name in sources:
            idx = np.flatnonzero(domains_arr == name)
            w, _, reps = coreset_propagate(emb[idx], max(1, math.ceil(budget * len(idx))),
                                           lambda i, idx=idx: scorer(docs[idx[i]]))
            value[idx] = w
            chosen.update(int(idx[r]) for r in reps)
            scored += len(reps)
        info["scored"] = scored
        weights = {}
        for i, h in enumerate(hashes):  # a duplicated document: the larger of its weights
            weights[h] = max(weights.get(h, 0.0), float(value[i]))
        info["selected"] = {d: int(sum(1 for i in chosen if domains[i] == d)) for d in sources}
        return weights, info
    weights = {}
    for i, h in enumerate(hashes):     # a duplicated document is kept if any copy is chosen
        weights[h] = max(weights.get(h, 0.0), 1.0 if i in chosen else 0.0)
    info["selected"] = {d: int(sum(1 for i in chosen if domains[i] == d)) for d in sources}
    return weights, info
