"""RegMix (Liu et al., ICLR 2025, arXiv 2407.01492): regress target loss on the mixture.

Given P proxies with mixtures X (float[P, K]) and target losses y (float[P]):

* regressors (``sail-sg/regmix: regression_fitting/regression.ipynb``):
  - ``lightgbm``: ``lightgbm.train`` with the reference's parameters
    (:data:`LGBM_PARAMS`: gbdt, objective regression, metrics l1 and l2,
    1000 rounds, learning rate 1e-2, seed 42, everything else LightGBM's
    default) and early stopping after 3 rounds without improvement;
  - ``linear``: ordinary least squares y ~ b + X w (scipy.linalg.lstsq).
  The reference early-stops on the very mixtures it reports Spearman on
  (mixing-search.md, pitfall 4); here the held-out figures are out-of-fold:
  ``folds``-fold cross-validation, early stopping on a split of the *training*
  fold, and the final model uses the median best round count of the folds.
* held-out quality: Spearman rank correlation (scipy.stats.spearmanr) and mean
  absolute error of the out-of-fold predictions.
* search (the reference's simulate-and-average-top-k): draw ``num_samples``
  (100 000) mixtures from ``Dirichlet(prior)`` (the raw token prior, no
  temperature, seed 42), keep those inside the constraints, predict, and return
  the mean of the ``top_k`` (128) mixtures with the lowest predicted loss. The
  mean of feasible points of a box-constrained simplex is feasible (convexity).
* uncertainty: ``bootstrap`` refits on proxies resampled with replacement and
  repeats the search on the same candidates; the spread of the found weights
  and of the predicted loss of the returned mixture is reported.

The target (:func:`target_values`) is any eval domain (a training or a held-out
one), ``"average"`` (uniform over the training domains) or a weighted target
mixture ``{domain: weight}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

LGBM_PARAMS: dict[str, Any] = {
    "boosting_type": "gbdt", "objective": "regression", "metric": ["l1", "l2"],
    "num_iterations": 1000, "learning_rate": 1e-2, "seed": 42, "verbosity": -1,
    # not a model setting: tens of rows gain nothing from threads, and a shared CPU loses
    "num_threads": 1,
}
EARLY_STOPPING_ROUNDS = 3
REGRESSORS = ("lightgbm", "linear", "auto")


class FitError(ValueError):
    """A fit that cannot be done or did not converge."""


def target_weights(eval_domains: Sequence[str], domains: Sequence[str], target: Any) -> np.ndarray:
    """float[K'] weights over the eval domains that define the target (module docstring)."""
    eval_domains, domains = tuple(eval_domains), tuple(domains)
    if target in (None, "average", "avg"):
        return np.array([1.0 / len(domains) if d in domains else 0.0 for d in eval_domains])
    if isinstance(target, str):
        if target not in eval_domains:
            raise FitError(f"target domain {target!r} is not in the data; evaluated domains: "
                           f"{list(eval_domains)} (a held-out target: set grads.target)")
        return np.array([1.0 if d == target else 0.0 for d in eval_domains])
    if isinstance(target, Mapping):
        unknown = sorted(set(target) - set(eval_domains))
        if unknown:
            raise FitError(f"target mixture: unknown domain(s) {unknown}; evaluated domains: "
                           f"{list(eval_domains)}")
        w = np.array([float(target.get(d, 0.0)) for d in eval_domains])
        if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise FitError(f"target mixture weights must be >= 0 and not all 0: {dict(target)}")
        return w / w.sum()
    raise FitError(f"target must be 'average', a domain name or {{domain: weight}}, "
                   f"got {target!r}")


def target_values(losses: np.ndarray, eval_domains: Sequence[str], domains: Sequence[str],
                  target: Any) -> np.ndarray:
    """float[P] target loss per proxy: ``losses @ target_weights``."""
    return np.asarray(losses, np.float64) @ target_weights(eval_domains, domains, target)


# ------------------------------------------------------------------ regressors
@dataclasses.dataclass
class Regressor:
    kind: str
    model: Any
    num_rounds: int | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float64))
        if self.kind == "linear":
            b, w = self.model
            return b + x @ w
        return np.asarray(self.model.predict(x, num_iteration=self.num_rounds), np.float64)


def fit_linear(x: np.ndarray, y: np.ndarray) -> Regressor:
    from scipy.linalg import lstsq
    a = np.hstack([np.ones((len(x), 1)), x])
    coef, *_ = lstsq(a, y)
    return Regressor("linear", (float(coef[0]), coef[1:]))


def fit_lightgbm(x: np.ndarray, y: np.ndarray, *, x_val=None, y_val=None,
                 num_rounds: int | None = None, params: Mapping | None = None) -> Regressor:
    """LightGBM with :data:`LGBM_PARAMS` (+ ``params``); early stopping on (x_val, y_val)
    if given, else ``num_rounds`` rounds."""
    import lightgbm as lgb
    p = {**LGBM_PARAMS, **(params or {})}
    if num_rounds is not None:
        p["num_iterations"] = int(num_rounds)
    train = lgb.Dataset(x, y, params={"verbosity": -1})
    if x_val is not None:
        val = lgb.Dataset(x_val, y_val, reference=train)
        booster = lgb.train(p, train, valid_sets=[val],
                            callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
        return Regressor("lightgbm", booster, max(int(booster.best_iteration), 1))
    booster = lgb.train(p, train)
    return Regressor("lightgbm", booster, int(p["num_iterations"]))


def _fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % folds


def cross_validate(x: np.ndarray, y: np.ndarray, kind: str, *, folds: int = 4, seed: int = 0,
                   params: Mapping | None = None) -> dict:
    """Out-of-fold predictions, Spearman rho, MAE and (lightgbm) best round counts."""
    from scipy.stats import spearmanr
    n = len(y)
    if n < max(folds, 4):
        raise FitError(f"cross-validation needs at least {max(folds, 4)} proxies, got {n}")
    ids = _fold_ids(n, folds, seed)
    pred = np.zeros(n)
    rounds = []
    for f in range(folds):
        tr, te = ids != f, ids == f
        if kind == "linear":
            reg = fit_linear(x[tr], y[tr])
        else:
            # early stopping on a quarter of the training fold, never on the held-out fold
            inner = _fold_ids(int(tr.sum()), 4, seed + 1 + f) == 0
            xt, yt = x[tr], y[tr]
            reg = fit_lightgbm(xt[~inner], yt[~inner], x_val=xt[inner], y_val=yt[inner],
                               params=params)
            rounds.append(reg.num_rounds)
        pred[te] = reg.predict(x[te])
    rho = float(spearmanr(pred, y).statistic)
    return {"kind": kind, "pred": pred, "spearman": rho, "mae": float(np.abs(pred - y).mean()),
            "rounds": rounds}


def fit(x: np.ndarray, y: np.ndarray, kind: str, *, cv: dict | None = None,
        params: Mapping | None = None) -> Regressor:
    """The final regressor on every proxy (lightgbm: the folds' median round count)."""
    if kind == "linear":
        return fit_linear(x, y)
    rounds = int(np.median(cv["rounds"])) if cv and cv.get("rounds") else None
    return fit_lightgbm(x, y, num_rounds=rounds or LGBM_PARAMS["num_iterations"], params=params)


# ---------------------------------------------------------------------- search
def candidates(prior: Sequence[float], *, num_samples: int = 100_000, seed: int = 42,
               constraints=None) -> np.ndarray:
    """``num_samples`` Dirichlet(prior) mixtures, those outside the constraints dropped."""
    prior = np.asarray(prior, np.float64)
    prior = prior / prior.sum()
    rows = np.random.default_rng(seed).dirichlet(prior, size=num_samples)
    if constraints is not None:
        rows = rows[constraints.holds(rows)]
    if len(rows) == 0:
        raise FitError(f"none of the {num_samples} simulated mixtures satisfies the "
                       "constraints; raise --samples or loosen them")
    return rows


def search(reg: Regressor, cands: np.ndarray, *, top_k: int = 128) -> tuple[np.ndarray, float]:
    """Mean of the ``top_k`` candidates with the lowest prediction; (weights, prediction)."""
    w, pred, _ = search_with_ties(reg, cands, top_k=top_k)
    return w, pred


def search_with_ties(reg: Regressor, cands: np.ndarray, *, top_k: int = 128):
    """:func:`search` plus the number of candidates tied with the k-th lowest prediction
    beyond the top k: a regressor that is flat near its minimum (e.g. LightGBM that could
    make no split) then picks the top k by candidate order, not by prediction."""
    pred = reg.predict(cands)
    k = min(top_k, len(cands))
    order = np.argsort(pred, kind="stable")
    best = order[:k]
    ties = int(np.sum(pred[order[k:]] <= pred[best[-1]]))
    w = cands[best].mean(axis=0)
    w = w / w.sum()
    return w, float(reg.predict(w[None])[0]), ties


def bootstrap(x: np.ndarray, y: np.ndarray, kind: str, cands: np.ndarray, found: np.ndarray, *,
              num: int = 32, top_k: int = 128, seed: int = 0, cv: dict | None = None,
              params: Mapping | None = None) -> dict:
    """Refit on proxies resampled with replacement; spread of found weights and predictions."""
    rng = np.random.default_rng(seed)
    weights, preds_found, preds_own = [], [], []
    for _ in range(num):
        idx = rng.integers(0, len(y), len(y))
        reg = fit(x[idx], y[idx], kind, cv=cv, params=params)
        w, p = search(reg, cands, top_k=top_k)
        weights.append(w)
        preds_own.append(p)
        preds_found.append(float(reg.predict(found[None])[0]))
    weights = np.array(weights)
    return {"num": num, "weights_std": weights.std(axis=0, ddof=1).tolist(),
            "weights_mean": weights.mean(axis=0).tolist(),
            "pred_found_mean": float(np.mean(preds_found)),
            "pred_found_std": float(np.std(preds_found, ddof=1)),
            "pred_found_interval90": [float(np.quantile(preds_found, 0.05)),
                                      float(np.quantile(preds_found, 0.95))]}


def run(x: np.ndarray, y: np.ndarray, prior: Sequence[float], *, regressor: str = "lightgbm",
        folds: int = 4, num_samples: int = 100_000, top_k: int = 128, boot: int = 32,
        constraints=None, seed: int = 0, params: Mapping | None = None) -> dict:
    """Cross-validate, fit, search and bootstrap; everything a report needs."""
    if regressor not in REGRESSORS:
        raise FitError(f"regressor must be one of {REGRESSORS}, got {regressor!r}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kinds = ("lightgbm", "linear") if regressor == "auto" else (regressor,)
    cvs = {k: cross_validate(x, y, k, folds=folds, seed=seed, params=params) for k in kinds}
    if regressor == "auto":   # the better held-out rank correlation decides
        chosen = max(kinds, key=lambda k: np.nan_to_num(cvs[k]["spearman"], nan=-2.0))
    else:
        chosen = regressor
    reg = fit(x, y, chosen, cv=cvs[chosen], params=params)
    cands = candidates(prior, num_samples=num_samples, constraints=constraints)
    w, pred, ties = search_with_ties(reg, cands, top_k=top_k)
    if not np.all(np.isfinite(w)):
        raise FitError("the search returned non-finite weights")
    out = {"regressor": chosen, "weights": w, "predicted": pred, "num_candidates": len(cands),
           "ties_beyond_top_k": ties,
           "cv": {k: {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv)
                      for kk, vv in v.items()} for k, v in cvs.items()}}
    if ties:
        out["warning"] = (f"the {chosen} regressor is flat at its minimum: {ties} more of "
                          f"the {len(cands)} candidates tie with the top {top_k}, so the found "
                          "mixture is the mean of a random subset of that flat region (all "
                          "candidates tied: the prior's mean). A tree model on few proxies is "
                          "coarse; for LightGBM lower lgbm_params.min_data_in_leaf (default 20)"
                          " or use more proxies")
    if boot:
        out["bootstrap"] = bootstrap(x, y, chosen, cands, w, num=boot, top_k=top_k, seed=seed,
                                     cv=cvs[chosen], params=params)
    return out
