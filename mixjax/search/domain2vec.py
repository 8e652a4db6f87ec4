"""Domain2Vec: a training-free mixture from meta-domain vectors (``mixjax search domain2vec``).

Zhang et al., "Domain2Vec: Vectorizing Datasets to Find the Optimal Data Mixture
without Training", ICML 2025, arXiv 2506.10952. A *vocabulary of meta-domains* and a
classifier ``p(meta-domain | document)`` turn every dataset into a vector, the mean
of the classifier's probabilities over its documents (section 3). Under the
*Distribution Alignment Assumption* (DA², section 4) the validation loss is lower
the closer the training mixture's vector ``V w = sum_j w_j v_j`` is to the validation
set's ``v_valid``, so the mixture is::

    w* = argmin_{w in simplex} dist(V w, v_valid)

No proxy model is trained. No reference code is public (searched 2026-12); the paper's
vocabulary is 260 k-means clusters of bge-small embeddings and its classifier a
fine-tuned Qwen2-1.5B. Our choices (all from kept libraries):

* **Meta-domains**: ``meta_domains = "source"`` (default): the fine-grained source
  of every document (the ``source`` field of mixpile's records: ``c-headers``,
  ``gutenberg``, ...); or an integer ``k``: k-means clusters of the documents'
  TF-IDF rows (:mod:`mixjax.data.regroup`'s embedding).
* **Classifier**: scikit-learn ``LogisticRegression`` (multinomial, L2, C = 10) on
  TF-IDF rows, trained on the *train* splits of the training domains (at most
  ``docs`` documents per domain); its accuracy on their validation splits is
  reported.
* **Vectors**: ``v_j`` = mean probability vector over (at most ``docs``) train
  documents of domain j; ``v_valid`` = the target's: the mean of the per-domain
  validation vectors (``target = "average"``), one domain's validation vector
  (``target = "<domain>"``), or a weighted mean (``{domain: weight}``). A target
  domain the run does not train on (outside ``data.domains``) is represented by its
  documents of every split (at most ``docs``): nothing is trained, so none of them
  can leak, and its validation split alone may be a handful of documents.
* **Distance**: squared Euclidean (``distance = "l2"``, default) or
  ``KL(v_valid || V w)`` (``"kl"``); both convex in w, minimised on the simplex by
  ``scipy.optimize.minimize(method="SLSQP")`` from the uniform mixture.

Output (``--out``): ``weights.json`` (as the other search routes: ``weights_by_domain``
and the ``--set`` line that trains on it) and ``domain2vec.json`` (meta-domains,
vectors, classifier accuracy, distance at the found and the uniform mixture).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any, Mapping

import numpy as np

DISTANCES = ("l2", "kl")


class Domain2VecError(ValueError):
    """Bad input to the Domain2Vec search (exit status 2)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    target: Any = "average"          # average | a domain | {domain: weight}
    meta_domains: Any = "source"     # "source" or an int k (k-means clusters)
    docs: int = 400                  # documents per domain for the classifier and vectors
    distance: str = "l2"
    seed: int = 0


def _check(s: Settings, train: list[str], everything: list[str]) -> dict[str, float]:
    if s.distance not in DISTANCES:
        raise Domain2VecError(f"domain2vec: distance must be one of {DISTANCES}, got {s.distance!r}")
    if not (s.meta_domains == "source" or (isinstance(s.meta_domains, int)
                                           and not isinstance(s.meta_domains, bool)
                                           and s.meta_domains >= 2)):
        raise Domain2VecError("domain2vec: meta_domains must be 'source' or an integer >= 2, "
                              f"got {s.meta_domains!r}")
    if s.docs < 2:
        raise Domain2VecError(f"domain2vec: docs must be >= 2, got {s.docs}")
    if len(train) < 2:
        raise Domain2VecError(f"domain2vec: a mixture needs >= 2 training domains, got {train}")
    t = s.target
    if t == "average":
        return {d: 1.0 / len(train) for d in train}
    if isinstance(t, str):
        t = {t: 1.0}
    if not isinstance(t, Mapping) or not t:
        raise Domain2VecError(f"domain2vec: target must be 'average', a domain or "
                              f"{{domain: weight}}, got {s.target!r}")
    unknown = sorted(set(t) - set(everything))
    if unknown:
        raise Domain2VecError(f"domain2vec: unknown target domain(s) {unknown}; known: {everything}")
    w = {d: float(v) for d, v in t.items()}
    if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise Domain2VecError(f"domain2vec: target weights must be >= 0 with a positive sum, got {t}")
    total = sum(w.values())
    return {d: v / total for d, v in w.items()}


def _sample(n: int, k: int, rng) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False)) if n > k else np.arange(n)


def _docs(source, split: str | None, k: int, rng, fractions) -> tuple[list[dict], list[str]]:
    """Up to ``k`` documents of ``split`` (None: all documents) and their texts."""
    from mixjax.data import splits
    from mixjax.data.regroup import record
    idx = (np.arange(len(source)) if split is None else
           splits.cached_split_indices(source, seed=0, fractions=fractions,
                                       domain=source.domain)[split])
    idx = idx[_sample(len(idx), k, rng)]
    recs = [record(source, int(i)) for i in idx]
    text_field = getattr(source, "text_field", "text")
    return recs, [r[text_field] for r in recs]


def solve(v: np.ndarray, v_valid: np.ndarray, distance: str = "l2") -> np.ndarray:
    """``argmin_{w in simplex} dist(v @ w, v_valid)``; ``v`` is [meta-domains, domains]."""
    from scipy.optimize import minimize
    k = v.shape[1]

    def f(w):
        m = v @ w
        if distance == "l2":
            r = m - v_valid
            return float(r @ r), 2.0 * (v.T @ r)
        m = np.maximum(m, 1e-12)
        pos = v_valid > 0
        return (float(np.sum(v_valid[pos] * (np.log(v_valid[pos]) - np.log(m[pos])))),
                -(v.T @ np.where(pos, v_valid / m, 0.0)))

    res = minimize(f, np.full(k, 1.0 / k), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                   constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def distance_of(v, v_valid, w, distance):
    m = v @ w
    if distance == "l2":
        return float(np.sum((m - v_valid) ** 2))
    pos = v_valid > 0
    return float(np.sum(v_valid[pos] * (np.log(v_valid[pos]) - np.log(np.maximum(m[pos], 1e-12)))))


def run(sources: Mapping[str, Any], train_domains: list[str], settings: Settings, *,
        fractions: Mapping[str, float] | None = None) -> dict:
    """The mixture over ``train_domains`` (module docstring); ``sources`` holds every domain
    (a held-out target too); ``fractions``: the split fractions (``data.split_fractions``)."""
    from mixjax.data import splits
    fractions = dict(splits.DEFAULT_FRACTIONS if fractions is None else fractions)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    target = _check(settings, list(train_domains), list(sources))
    rng = np.random.default_rng(settings.seed)
    train_docs = {d: _docs(sources[d], "train", settings.docs, rng, fractions)
                  for d in train_domains}
    # a training domain's validation split; a held-out target's documents, all of them
    valid_docs = {d: _docs(sources[d], "validation" if d in train_domains else None,
                           settings.docs, rng, fractions)
                  for d in sorted(set(train_domains) | set(target))}
    texts = [t for d in train_domains for t in train_docs[d][1]]
    vec = TfidfVectorizer(sublinear_tf=True, max_features=50_000, stop_words="english",
                          min_df=2 if len(texts) > 2 else 1, dtype=np.float32)
    try:
        x = vec.fit_transform(texts)
    except ValueError as e:
        raise Domain2VecError(f"domain2vec: no terms in the training documents ({e})") from None
    if settings.meta_domains == "source":
        labels = np.asarray([str(r.get("source", d)) for d in train_domains
                             for r in train_docs[d][0]])
    else:
        from mixjax.data.regroup import Options, cluster
        from sklearn.preprocessing import normalize
        k = int(settings.meta_domains)
        if k > x.shape[0]:
            raise Domain2VecError(f"domain2vec: meta_domains {k} exceeds the {x.shape[0]} "
                                  f"training documents")
        labels = np.asarray([f"m{c:03d}" for c in cluster(normalize(x), Options(k=k, seed=settings.seed))])
    metas = sorted(set(labels.tolist()))
    if len(metas) < 2:
        raise Domain2VecError(f"domain2vec: the training documents have one meta-domain "
                              f"({metas}); give meta_domains = k or data with several sources")
    clf = LogisticRegression(C=10.0, max_iter=1000, random_state=settings.seed).fit(x, labels)
    order = [list(clf.classes_).index(m) for m in metas]

    def vector(txts):
        return clf.predict_proba(vec.transform(txts))[:, order].mean(axis=0)

    v = np.stack([vector(train_docs[d][1]) for d in train_domains], axis=1)   # [M, K]
    valid_vec = {d: vector(valid_docs[d][1]) for d in valid_docs}
    v_valid = sum(w * valid_vec[d] for d, w in target.items())
    w = solve(v, v_valid, settings.distance)
    uniform = np.full(len(train_domains), 1.0 / len(train_domains))
    # held-out check of the classifier: validation documents of the training domains
    if settings.meta_domains == "source":
        vx = [t for d in train_domains for t in valid_docs[d][1]]
        vy = [str(r.get("source", d)) for d in train_domains for r in valid_docs[d][0]]
        acc = float(np.mean(clf.predict(vec.transform(vx)) == np.asarray(vy))) if vx else None
    else:
        acc = None
    return {"domains": list(train_domains), "weights": w, "target": target,
            "meta_domains": metas, "domain_vectors": {d: v[:, j] for j, d in enumerate(train_domains)},
            "target_vector": v_valid,
            "distance": settings.distance, "distance_found": distance_of(v, v_valid, w, settings.distance),
            "distance_uniform": distance_of(v, v_valid, uniform, settings.distance),
            "classifier_train_accuracy": float(clf.score(x, labels)),
            "classifier_validation_accuracy": acc,
            "documents": {"train": {d: len(train_docs[d][1]) for d in train_domains},
                          "validation": {d: len(valid_docs[d][1]) for d in valid_docs}},
            "settings": dataclasses.asdict(settings), "seconds": time.perf_counter() - t0}


def write(result: dict, out: pathlib.Path) -> None:
    from mixjax import atomic
    out.mkdir(parents=True, exist_ok=True)
    doms, w = result["domains"], np.asarray(result["weights"], np.float64)
    wbd = {d: float(x) for d, x in zip(doms, w)}
    weights = {"method": "domain2vec", "domains": doms, "weights_by_domain": wbd,
               "predicted_target_loss": None, "target": result["target"],
               "alignment_distance": result["distance_found"],
               "use": "--set mixing.name=manual --set 'mixing.hparams.weights_by_domain="
                      + json.dumps({d: round(x, 6) for d, x in wbd.items()}) + "'"}

    def plain(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        raise TypeError(type(o))

    atomic.write_text(out / "weights.json", json.dumps(weights, indent=2) + "\n")
    atomic.write_text(out / "domain2vec.json", json.dumps(result, indent=1, default=plain) + "\n")


def run_cli(args) -> int:
    """``mixjax search domain2vec`` (arguments: mixjax.search.command.add_arguments)."""
    from mixjax import config as config_lib
    from mixjax.config import ConfigError
    from mixjax.data.sources import DataError
    from mixjax.train.data import _all_sources
    try:
        path = pathlib.Path(args.config)
        if not path.is_file():
            raise Domain2VecError(f"config file {str(path)!r} does not exist")
        cfg = config_lib.load(path, args.overrides)
        target = args.target
        if target is None:
            spec = importlib.util.spec_from_file_location(f"_mixjax_d2v_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            root = str(path.resolve().parent.parent)
            sys.path.insert(0, root)
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(root)
            target = (module.get_search() if hasattr(module, "get_search") else {}).get(
                "target", "average")
        elif target.startswith("{"):
            try:
                target = json.loads(target)
            except json.JSONDecodeError as e:
                raise Domain2VecError(f"--target: not JSON ({e})") from None
        meta = args.meta_domains
        if meta != "source":
            try:
                meta = int(meta)
            except ValueError:
                raise Domain2VecError(f"--meta-domains must be 'source' or an integer, "
                                  f"got {meta!r}") from None
        settings = Settings(target=target, meta_domains=meta, docs=args.docs,
                                       distance=args.distance, seed=args.seed)
        sources = _all_sources(cfg)
        train = list(cfg.data.domains) if cfg.data.domains is not None else list(sources)
        unknown = sorted(set(train) - set(sources))
        if unknown:
            raise Domain2VecError(f"config key 'data.domains': unknown domain(s) {unknown}; "
                              f"known: {sorted(sources)}")
        from mixjax.train.data import split_fractions
        res = run(sources, train, settings, fractions=split_fractions(cfg))
        out = pathlib.Path(args.out or f"runs/search_domain2vec_{cfg.name}")
        write(res, out)
    except (Domain2VecError, ConfigError, DataError, KeyError,
            FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print("found mixture: " + ", ".join(f"{d} {w:.3f}" for d, w in
                                        zip(res["domains"], res["weights"])))
    acc = res["classifier_validation_accuracy"]
    print(f"{len(res['meta_domains'])} meta-domains; classifier validation accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}; {res['distance']} distance to the target "
          f"vector {res['distance_found']:.4g} (uniform {res['distance_uniform']:.4g}); "
          f"{res['seconds']:.1f} s")
    print(f"weights: {out / 'weights.json'}   details: {out / 'domain2vec.json'}")
    return 0
