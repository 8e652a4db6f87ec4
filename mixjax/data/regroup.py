"""Regroup: re-partition a corpus into finer semantic domains (R&B's first half).

Ge et al., "R&B: Domain Regrouping and Data Mixture Balancing for Efficient
Foundation Model Training", arXiv 2505.00358, section 3.1: the training data is
re-partitioned by semantic similarity (k-means over document embeddings; the
paper embeds with ModernBERT) before the Balance step (:mod:`mixjax.mixing.rnb`)
mixes the new domains. No reference code for R&B is public (searched 2026-12),
so this follows the paper's description with these choices:

* **Embeddings** come from a kept library, not a neural encoder: scikit-learn's
  ``TfidfVectorizer`` (word unigrams without English stop words, sublinear tf,
  terms in at least ``min_df`` documents, at most ``max_features``
  terms, rows L2-normalised), optionally reduced by ``TruncatedSVD`` to ``svd``
  dimensions (LSA; rows re-normalised). On unit rows, Euclidean k-means is
  spherical (cosine) k-means, the usual choice for text.
* **Units, not parts**: parts of one document (ids equal up to a ``#<k>`` suffix,
  the corpus's split groups, :func:`mixjax.data.sources.group_hash`) form one
  *unit*, embedded as the normalised sum of its parts' rows, so every part of a
  document lands in the same cluster and the new domains' splits never put one
  document's parts on both sides of train/validation. ``k`` may not exceed the
  number of units.
* **k-means**: ``sklearn.cluster.KMeans(k, n_init, random_state=seed)`` (Lloyd,
  k-means++ starts); the same corpus, ``k``, ``seed`` and options give the same
  clusters and the same bytes. Clusters are named ``c00``, ``c01``, ... by
  decreasing size (ties: the first unit they hold).

Output, in ``out``: ``<cluster>.jsonl`` (every document's original JSON record
with ``domain`` set to its cluster and ``original_domain`` added; a record
without an ``id`` gets one naming its unit), ``spec.json`` (a dataset spec,
``{"domains": [{"name": "c00", "kind": "jsonl", "path": ..., "group_field":
"id"}, ...]}``, for ``data.spec``; the directory itself also works as
``data.corpus``), and ``regroup.json`` (the options, and per cluster its
documents, units, bytes, share of each original domain and top terms).

The clusters cover *all* documents of the input; a run on them makes its own
train/validation/test split per cluster (:mod:`mixjax.data.splits`), so its
validation sets are the clusters', not the original domains'. Corpus split
floors (``split_floors`` of a manifest) are not carried over: small clusters
may not meet them; set ``data.split_min_docs`` / ``data.split_min_bytes``.

``mixjax data regroup NAME|DIR|SPEC.json --k K --out DIR [--svd D] [--seed S]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Mapping

import numpy as np

from mixjax import atomic
from mixjax.data.sources import DataError, DomainSource, group_hash

FORMAT = "mixjax.regroup/1"
WRITTEN = ("spec.json", "regroup.json")      # besides the <cluster>.jsonl files


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    k: int
    seed: int = 0
    svd: int = 0                  # 0: TF-IDF rows as they are; else TruncatedSVD dimensions
    max_features: int = 50_000
    min_df: int = 2               # a term must occur in at least this many documents
    n_init: int = 3               # k-means restarts (the best inertia is kept)
    top_terms: int = 8            # terms per cluster in regroup.json

    def check(self, num_units: int) -> None:
        if self.k < 2:
            raise DataError(f"regroup: --k must be >= 2, got {self.k}")
        if self.k > num_units:
            raise DataError(f"regroup: --k {self.k} exceeds the {num_units} documents to cluster "
                            f"(parts of one document count once)")
        if self.svd < 0:
            raise DataError(f"regroup: --svd must be >= 0, got {self.svd}")
        if self.max_features < 1 or self.min_df < 1 or self.n_init < 1:
            raise DataError("regroup: --max-features, --min-df and --n-init must be >= 1")


@dataclasses.dataclass(frozen=True)
class Result:
    out: pathlib.Path
    clusters: dict[str, dict]     # name -> regroup.json entry
    seconds: float


def record(source: DomainSource, index: int) -> dict:
    """The document's JSON record when the source has one (JSONL), else ``{"text": doc}``."""
    get = getattr(source, "record", None)
    if get is not None:
        return dict(get(index))
    doc = source[index]
    if isinstance(doc, np.ndarray):
        raise DataError(f"domain {source.domain!r}: regroup needs text documents, "
                        f"got pre-tokenized arrays")
    return {"text": str(doc)}


def _units(sources: Mapping[str, DomainSource], records: list[list[dict]]) -> tuple[np.ndarray, int]:
    """``(unit index of every document in corpus order, number of units)``."""
    keys: list[tuple[int, int]] = []
    for d, (name, src) in enumerate(sources.items()):
        groups = src.group_keys()
        for i, rec in enumerate(records[d]):
            g = int(groups[i]) if groups is not None else group_hash(rec.get("id"), f"{name}:{i}")
            keys.append((d, g))
    # first-appearance order, so unit numbers follow the corpus order
    index: dict[tuple[int, int], int] = {}
    unit = np.fromiter((index.setdefault(kk, len(index)) for kk in keys), np.int64, len(keys))
    return unit, len(index)


def embed(texts: list[str], unit: np.ndarray, num_units: int, opts: Options):
    """``(unit embeddings, the documents' TF-IDF rows, the vectorizer)``."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    min_df = opts.min_df if len(texts) > opts.min_df else 1
    vec = TfidfVectorizer(sublinear_tf=True, max_features=opts.max_features, min_df=min_df,
                          stop_words="english",
                          dtype=np.float32)
    try:
        docs = vec.fit_transform(texts)
    except ValueError as e:      # no term survives (empty vocabulary)
        raise DataError(f"regroup: no terms to embed the documents with ({e})") from None
    x = docs
    if num_units < len(texts):   # parts of one document: the sum of their rows
        member = sp.csr_matrix((np.ones(len(texts), np.float32), (unit, np.arange(len(texts)))),
                               shape=(num_units, len(texts)))
        x = member @ docs
    x = normalize(x)
    if opts.svd:
        dim = min(opts.svd, x.shape[1] - 1, num_units - 1)
        if dim < 1:
            raise DataError(f"regroup: --svd {opts.svd} leaves no dimension "
                            f"({x.shape[1]} terms, {num_units} documents)")
        x = normalize(TruncatedSVD(dim, random_state=opts.seed).fit_transform(x))
    return x, docs, vec


def cluster(x, opts: Options) -> np.ndarray:
    """int64[units]: k-means labels, renumbered by decreasing size (ties: first unit)."""
    from sklearn.cluster import KMeans
    raw = KMeans(opts.k, n_init=opts.n_init, random_state=opts.seed).fit_predict(x)
    sizes = np.bincount(raw, minlength=opts.k)
    first = np.array([np.flatnonzero(raw == c)[0] if sizes[c] else len(raw) for c in range(opts.k)])
    order = sorted(range(opts.k), key=lambda c: (-sizes[c], first[c]))
    rank = np.empty(opts.k, np.int64)
    rank[order] = np.arange(opts.k)
    return rank[raw]


def _top_terms(x_docs, labels_doc: np.ndarray, vec, k: int, n: int) -> list[list[str]]:
    terms = np.asarray(vec.get_feature_names_out())
    out = []
    for c in range(k):
        rows = np.flatnonzero(labels_doc == c)
        if len(rows) == 0:
            out.append([])
            continue
        mean = np.asarray(x_docs[rows].mean(axis=0)).ravel()
        top = np.argsort(-mean, kind="stable")[:n]
        out.append([str(terms[j]) for j in top if mean[j] > 0])
    return out


def _prepare_out(out: pathlib.Path, overwrite: bool, inputs: list[str]) -> None:
    out = out.resolve()
    for p in inputs:
        if pathlib.Path(p).resolve().parent == out:
            raise DataError(f"regroup: --out {str(out)!r} holds the input file {p!r}; "
                            f"choose another directory")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"regroup: --out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"regroup: --out {str(out)!r} is not empty (pass --overwrite)")
        for f in [*out.glob("*.jsonl"), *(out / n for n in WRITTEN)]:
            f.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def regroup(sources: Mapping[str, DomainSource], out: str | os.PathLike, opts: Options, *,
            overwrite: bool = False) -> Result:
    """Clusters every document of ``sources`` into ``opts.k`` new domains written to ``out``
    (module docstring)."""
    t0 = time.perf_counter()
    if opts.k < 2:                       # before reading anything
        opts.check(opts.k)
    names = list(sources)
    records = [[record(src, i) for i in range(len(src))] for src in sources.values()]
    unit, num_units = _units(sources, records)
    opts.check(num_units)
    out = pathlib.Path(out)
    inputs = [p for s in sources.values() for p in getattr(s, "paths", [])]
    _prepare_out(out, overwrite, inputs)

    text_key = [getattr(s, "text_field", "text") for s in sources.values()]
    texts = [rec[text_key[d]] for d in range(len(names)) for rec in records[d]]
    x_units, x_docs, vec = embed(texts, unit, num_units, opts)
    labels_unit = cluster(x_units, opts)
    labels = labels_unit[unit]                       # per document
    width = max(2, len(str(opts.k - 1)))
    cnames = [f"c{c:0{width}d}" for c in range(opts.k)]

    lines: list[list[str]] = [[] for _ in range(opts.k)]
    share = np.zeros((opts.k, len(names)), np.int64)
    nbytes = np.zeros(opts.k, np.int64)
    j = 0
    for d, name in enumerate(names):
        groups = sources[name].group_keys()
        for i, rec in enumerate(records[d]):
            c = int(labels[j])
            rec = dict(rec)
            if text_key[d] != "text":
                rec["text"] = rec.pop(text_key[d])
            if "id" not in rec:   # name the unit so its parts share a split in the new domain
                rec["id"] = f"{name}:{int(groups[i]) if groups is not None else i:x}"
            rec["original_domain"] = rec.get("domain", name)
            rec["domain"] = cnames[c]
            lines[c].append(json.dumps(rec, ensure_ascii=False))
            share[c, d] += 1
            nbytes[c] += len(rec["text"].encode("utf-8"))
            j += 1

    # top terms: from the TF-IDF rows of the documents (before any SVD)
    top = _top_terms(x_docs, labels, vec, opts.k, opts.top_terms)
    clusters = {}
    for c, cname in enumerate(cnames):
        data = ("\n".join(lines[c]) + "\n").encode("utf-8")
        atomic.write_bytes(out / f"{cname}.jsonl", data)
        clusters[cname] = {
            "documents": len(lines[c]), "units": int(np.sum(labels_unit == c)),
            "bytes": int(nbytes[c]),
            "original_domains": {names[d]: int(share[c, d]) for d in range(len(names)) if share[c, d]},
            "top_terms": top[c]}
    spec = {"domains": [{"name": cname, "kind": "jsonl",
                         "path": str((out / f"{cname}.jsonl").resolve()), "group_field": "id"}
                        for cname in cnames]}
    atomic.write_text(out / "spec.json", json.dumps(spec, indent=1) + "\n")
    info = {"format": FORMAT, "options": dataclasses.asdict(opts),
            "embedding": "tfidf" + (f"+svd{opts.svd}" if opts.svd else ""),
            "input_domains": {n: len(r) for n, r in zip(names, records)},
            "documents": len(texts), "units": num_units,
            "clusters": clusters}
    atomic.write_text(out / "regroup.json", json.dumps(info, indent=1) + "\n")
    return Result(out, clusters, time.perf_counter() - t0)
