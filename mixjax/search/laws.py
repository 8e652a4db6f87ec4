"""Mixture laws: Data Mixing Laws (Ye et al.) and optimal-mixture scaling laws (Shukor et al.).

Data Mixing Law (Ye et al., ICLR 2025, arXiv 2403.16952; ``yegcjs/mixinglaws:
pipeline/utils.py``), per target domain i, for a mixture r on the simplex::

    L_i(r) = c_i + k_i exp(sum_j t_ij r_j)

Because sum_j r_j = 1, ``k_i`` and a common shift of ``t_i`` are one parameter:
``k_i exp(t_i . r) = exp(u_i . r)`` with ``u_ij = log k_i + t_ij``. We fit
``L_i(r) = exp(a_i) + exp(u_i . r)`` (the reference's parameterisation ``e^c +
e^(k + t.r)`` with k folded into t), K + 1 identifiable parameters, so at least
K + 2 mixtures are needed. A target that mixes domains with weights pi is
``sum_i pi_i L_i(r)`` (the paper's explicit domain aggregation).

Step and size laws (the nested pipeline, ``pipeline/steplaw.py``, ``sizelaw.py``)::

    L(x) = exp(c) + exp(alpha (log k - log x)) = e^c + (k / x)^alpha

fitted on a proxy's loss over steps (or over model sizes) and used to predict the
loss at a larger step (size) before the mixture law is fitted.

Scaling laws for optimal data mixtures (Shukor et al. 2025, arXiv 2507.09404;
no public code, forms from mixing-search.md §3), for N parameters, D tokens and
mixture h::

    additive:  L = E + 1 / (sum_i C_i h_i^gamma_i) + A / N^alpha + B / D^beta
    joint:     L = E + 1 / (sum_i C_i h_i^gamma_i) + A_h / N^alpha + B_h / D^beta,
               A_h = (sum_i CA_i h_i)^gamma_A,  B_h = (sum_i CB_i h_i)^gamma_B

(the joint law's A_h, B_h parameterisation is the unverified one of the reference
notes; 4K + 5 parameters). Positive parameters are fitted as logs.

Fitting: scipy.optimize.least_squares with a Huber loss (``f_scale`` = delta, as
the references' Huber objectives), from ``restarts`` random initialisations,
keeping the lowest cost (Ye et al.: best of several L-BFGS inits; Shukor et al.:
L-BFGS inside basin hopping). A fit none of whose restarts converges raises
FitError with the best residual. Search: scipy.optimize.minimize (SLSQP) on the
simplex with the box constraints, from several feasible starts; the result is
checked to be feasible and finite.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import least_squares, minimize

from mixjax.search.regmix import FitError


@dataclasses.dataclass
class LawFit:
    params: np.ndarray
    cost: float
    residual_rms: float
    converged: bool
    predict: Callable[[np.ndarray], np.ndarray]


def _fit(residual_fn, init_fn, n_params: int, *, restarts: int, seed: int, delta: float,
         what: str, max_nfev: int = 2000, tol: float = 1e-8,
         jac: Callable | str = "2-point") -> tuple[np.ndarray, float, float, bool]:
    """Huber least squares from ``restarts`` random inits; the best finite fit.
    ``jac``: the residuals' Jacobian (params -> float[n, n_params]) where the law has a
    closed form (one evaluation per iteration instead of ``n_params`` extra ones)."""
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        x0 = init_fn(rng)
        try:
            with np.errstate(all="ignore"):   # a bad init may overflow; it then loses
                r = least_squares(residual_fn, x0, jac=jac, loss="huber", f_scale=delta,
                                  max_nfev=max_nfev, x_scale="jac", ftol=tol, xtol=tol,
                                  gtol=tol)
        except (ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(r.x)) or not np.isfinite(r.cost):
            continue
        if best is None or r.cost < best.cost:
            best = r
    if best is None:
        raise FitError(f"{what}: no restart of the fit produced finite parameters")
    with np.errstate(all="ignore"):
        rms = float(np.sqrt(np.mean(residual_fn(best.x) ** 2)))
    return best.x, float(best.cost), rms, bool(best.status > 0)


# the shared fitter, also used by dcpt_law.py and sft_law.py
fit_huber = _fit


# ----------------------------------------------------------- Data Mixing Law (Ye et al.)
def ye_predict(params: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``exp(a) + exp(u . r)``; params = [a, u_1..u_K]."""
    r = np.atleast_2d(r)
    return np.exp(params[0]) + np.exp(np.clip(r @ params[1:], -50, 50))


def ye_jacobian(params: np.ndarray, r: np.ndarray) -> np.ndarray:
    """d ye_predict / d params: ``[exp(a), exp(u . r) r]`` (0 where u . r is clipped)."""
    r = np.atleast_2d(r)
    s = r @ params[1:]
    e = np.where(np.abs(s) <= 50, np.exp(np.clip(s, -50, 50)), 0.0)
    return np.concatenate([np.full((len(r), 1), np.exp(params[0])), e[:, None] * r], axis=1)


def fit_ye(r: np.ndarray, y: np.ndarray, *, restarts: int = 16, seed: int = 0,
           delta: float = 0.01) -> LawFit:
    """Fits one domain's law (module docstring); needs at least K + 2 mixtures."""
    r, y = np.asarray(r, np.float64), np.asarray(y, np.float64)
    k = r.shape[1]
    if len(y) < k + 2:
        raise FitError(f"the mixing law has {k + 1} parameters for {k} domains: it needs at "
                       f"least {k + 2} mixtures, got {len(y)}")
    lo = float(y.min())

    def init(rng):
        a = np.log(max(lo * rng.uniform(0.3, 0.95), 1e-6))
        u = np.log(max(float(y.mean()) - np.exp(a), 1e-3)) + rng.normal(0, 0.5, k)
        return np.concatenate([[a], u])

    x, cost, rms, ok = _fit(lambda p: ye_predict(p, r) - y, init, k + 1, restarts=restarts,
                            seed=seed, delta=delta, what="mixing law",
                            jac=lambda p: ye_jacobian(p, r))
    return LawFit(x, cost, rms, ok, lambda q, x=x: ye_predict(x, q))


@dataclasses.dataclass
class TargetLaw:
    """sum_i pi_i L_i(r) over the domains with pi_i > 0."""
    fits: dict
    pi: np.ndarray

    def predict(self, r: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(r)
        return sum(self.pi[i] * f.predict(r) for i, f in self.fits.items())

    @property
    def converged(self) -> bool:
        return all(f.converged for f in self.fits.values())


def fit_target_law(r: np.ndarray, losses: np.ndarray, pi: np.ndarray, *, restarts: int = 16,
                   seed: int = 0) -> TargetLaw:
    """One Ye law per eval domain with target weight pi_i > 0 (losses: float[P, K'])."""
    fits = {i: fit_ye(r, losses[:, i], restarts=restarts, seed=seed + i)
            for i in np.flatnonzero(pi > 0)}
    return TargetLaw(fits, np.asarray(pi, np.float64))


# ------------------------------------------------------------------ step / size laws
def power_predict(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``exp(c) + exp(alpha (log k - log x))``; params = [c, log k, alpha]."""
    c, logk, alpha = params
    return np.exp(c) + np.exp(np.clip(alpha * (logk - np.log(x)), -50, 50))


def fit_power(x: np.ndarray, y: np.ndarray, *, restarts: int = 32, seed: int = 0,
              delta: float = 0.01) -> LawFit:
    """Step (or size) law of Ye et al. (``pipeline/steplaw.py``); needs >= 4 points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(y) < 4:
        raise FitError(f"a step/size law needs at least 4 points, got {len(y)}")
    lx = np.log(x)

    def init(rng):
        return np.array([np.log(max(float(y.min()) * rng.uniform(0.3, 0.95), 1e-6)),
                         rng.uniform(lx.min() - 2, lx.max() + 2), rng.uniform(0.2, 1.0)])

    # three parameters: tight tolerances are cheap and extrapolation needs them
    p, cost, rms, ok = _fit(lambda q: power_predict(q, x) - y, init, 3, restarts=restarts,
                            seed=seed, delta=delta, what="step/size law", tol=1e-12)
    return LawFit(p, cost, rms, ok, lambda q, p=p: power_predict(p, q))


# ------------------------------------------------------- Shukor et al. scaling laws
def _bias(h, logc, loggamma):
    return 1.0 / np.sum(np.exp(logc)[None] * np.power(h, np.exp(loggamma)[None]), axis=1)


def additive_predict(params: np.ndarray, n, d, h) -> np.ndarray:
    """params = [E, logC (K), loggamma (K), logA, logalpha, logB, logbeta]."""
    h = np.atleast_2d(h)
    k = h.shape[1]
    e, logc, logg = params[0], params[1:1 + k], params[1 + k:1 + 2 * k]
    loga, logal, logb, logbe = params[1 + 2 * k:]
    return (e + _bias(h, logc, logg) + np.exp(loga - np.exp(logal) * np.log(n))
            + np.exp(logb - np.exp(logbe) * np.log(d)))


def joint_predict(params: np.ndarray, n, d, h) -> np.ndarray:
    """params = [E, logC, loggamma, logCA, loggammaA, logalpha, logCB, loggammaB, logbeta]."""
    h = np.atleast_2d(h)
    k = h.shape[1]
    e = params[0]
    logc, logg = params[1:1 + k], params[1 + k:1 + 2 * k]
    logca, logga, logal = params[1 + 2 * k:1 + 3 * k], params[1 + 3 * k], params[2 + 3 * k]
    logcb, loggb, logbe = params[3 + 3 * k:3 + 4 * k], params[3 + 4 * k], params[4 + 4 * k]
    a_h = np.power(h @ np.exp(logca), np.exp(logga))
    b_h = np.power(h @ np.exp(logcb), np.exp(loggb))
    return (e + _bias(h, logc, logg) + a_h * np.exp(-np.exp(logal) * np.log(n))
            + b_h * np.exp(-np.exp(logbe) * np.log(d)))


def num_params(kind: str, k: int) -> int:
    return 2 * k + 5 if kind == "additive" else 4 * k + 5


def fit_scaling_law(kind: str, n: np.ndarray, d: np.ndarray, h: np.ndarray, y: np.ndarray, *,
                    restarts: int = 32, seed: int = 0, delta: float = 1e-3) -> LawFit:
    """Fits the ``additive`` or ``joint`` law of Shukor et al. (module docstring)."""
    n, d, h, y = (np.asarray(a, np.float64) for a in (n, d, h, y))
    k = h.shape[1]
    m = num_params(kind, k)
    if len(y) < m + 1:
        raise FitError(f"the {kind} law has {m} parameters for {k} domains: it needs at least "
                       f"{m + 1} (N, D, mixture) runs, got {len(y)}")
    predict = additive_predict if kind == "additive" else joint_predict
    ln, ld = np.log(n), np.log(d)

    def init(rng):
        e = float(y.min()) * rng.uniform(0.3, 0.9)
        common = [e, *rng.normal(0, 1, k), *np.log(rng.uniform(0.2, 2.0, k))]
        al, be = rng.uniform(0.1, 0.8, 2)
        if kind == "additive":
            return np.array(common + [al * ln.mean() + rng.normal(0, 1), np.log(al),
                                      be * ld.mean() + rng.normal(0, 1), np.log(be)])
        return np.array(common + [*(rng.normal(al * ln.mean(), 1, k)), np.log(rng.uniform(
            0.5, 2.0)), np.log(al), *(rng.normal(be * ld.mean(), 1, k)),
            np.log(rng.uniform(0.5, 2.0)), np.log(be)])

    p, cost, rms, ok = _fit(lambda q: predict(q, n, d, h) - y, init, m, restarts=restarts,
                            seed=seed, delta=delta, what=f"{kind} scaling law")
    return LawFit(p, cost, rms, ok, lambda nn, dd, hh, p=p: predict(p, nn, dd, hh))


# -------------------------------------------------------------------- simplex search
def minimise_on_simplex(f: Callable[[np.ndarray], float], lo: np.ndarray, hi: np.ndarray, *,
                        starts: Sequence[np.ndarray] = (), seed: int = 0,
                        num_random: int = 8) -> tuple[np.ndarray, float]:
    """argmin of ``f`` over {h: sum h = 1, lo <= h <= hi} (SLSQP from several starts)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    k = len(lo)
    rng = np.random.default_rng(seed)
    x0s = [np.asarray(s, np.float64) for s in starts]
    x0s.append(_feasible_point(lo, hi, np.full(k, 1.0 / k)))
    for _ in range(num_random):
        x0s.append(_feasible_point(lo, hi, rng.dirichlet(np.ones(k))))
    cons = [{"type": "eq", "fun": lambda h: np.sum(h) - 1.0, "jac": lambda h: np.ones_like(h)}]
    best = None
    for x0 in x0s:
        r = minimize(lambda h: float(f(h)), x0, method="SLSQP", bounds=list(zip(lo, hi)),
                     constraints=cons, options={"maxiter": 500, "ftol": 1e-12})
        h = np.clip(r.x, lo, hi)
        if not np.all(np.isfinite(h)) or abs(h.sum() - 1.0) > 1e-6:
            continue
        h = h / h.sum()
        val = float(f(h))
        if np.isfinite(val) and (best is None or val < best[1]):
            best = (h, val)
    if best is None:
        raise FitError("the simplex search found no feasible finite point")
    return best


def _feasible_point(lo, hi, h):
    """A point of the box-constrained simplex near ``h`` (bisection on a shift)."""
    a, b = -1.0, 1.0
    for _ in range(100):
        t = (a + b) / 2
        s = np.clip(h + t, lo, hi).sum()
        a, b = (t, b) if s < 1.0 else (a, t)
    return np.clip(h + (a + b) / 2, lo, hi)


# --------------------------------------------------------------------- the law search
def run_mixture_law(r: np.ndarray, losses: np.ndarray, pi: np.ndarray, cons, *,
                    restarts: int = 16, boot: int = 16, folds: int = 4, seed: int = 0) -> dict:
    """Fit the target law, cross-validate it, search the simplex, bootstrap; a fit record."""
    from scipy.stats import spearmanr
    r, losses = np.asarray(r, np.float64), np.asarray(losses, np.float64)
    y = losses @ pi
    law = fit_target_law(r, losses, pi, restarts=restarts, seed=seed)
    resid = law.predict(r) - y
    ids = np.random.default_rng(seed).permutation(len(y)) % folds
    pred = np.zeros(len(y))
    k = r.shape[1]
    for f in range(folds):
        tr = ids != f
        if tr.sum() < k + 2:
            raise FitError(f"{folds}-fold check: a training fold has {int(tr.sum())} mixtures, "
                           f"fewer than the {k + 2} the law needs; use more proxies")
        pred[~tr] = fit_target_law(r[tr], losses[tr], pi, restarts=max(restarts // 4, 2),
                                   seed=seed).predict(r[~tr])
    w, val = minimise_on_simplex(lambda h: law.predict(h[None])[0], cons.lo, cons.hi,
                                 starts=list(r[np.argsort(y)[:3]]), seed=seed)
    out = {"regressor": "mixing_law", "weights": w, "predicted": val,
           "residual_rms": float(np.sqrt(np.mean(resid ** 2))), "converged": law.converged,
           "params": {int(i): f.params.tolist() for i, f in law.fits.items()},
           "cv": {"pred": pred.tolist(), "spearman": float(spearmanr(pred, y).statistic),
                  "mae": float(np.abs(pred - y).mean())}}
    if boot:
        rng = np.random.default_rng(seed + 1)
        ws, preds = [], []
        for _ in range(boot):
            idx = rng.integers(0, len(y), len(y))
            b = fit_target_law(r[idx], losses[idx], pi, restarts=max(restarts // 4, 2),
                               seed=seed)
            wb, _ = minimise_on_simplex(lambda h: b.predict(h[None])[0], cons.lo, cons.hi,
                                        seed=seed, num_random=2)
            ws.append(wb)
            preds.append(float(b.predict(w[None])[0]))
        ws = np.array(ws)
        out["bootstrap"] = {"num": boot, "weights_std": ws.std(axis=0, ddof=1).tolist(),
                            "weights_mean": ws.mean(axis=0).tolist(),
                            "pred_found_mean": float(np.mean(preds)),
                            "pred_found_std": float(np.std(preds, ddof=1)),
                            "pred_found_interval90": [float(np.quantile(preds, 0.05)),
                                                      float(np.quantile(preds, 0.95))]}
    if not out["converged"]:
        out["warning"] = (f"the least-squares fit did not report convergence for every domain "
                          f"law; train residual RMS {out['residual_rms']:.4g}")
    return out


# ------------------------------------------------- the scaling-law search across sizes
def run_scaling_law(kind: str, n: np.ndarray, d: np.ndarray, h: np.ndarray, y: np.ndarray,
                    target_n: float, target_d: float, cons, *, restarts: int = 16,
                    seed: int = 0) -> dict:
    """Shukor et al.'s ``additive`` or ``joint`` law L(N, D, h) fitted across proxy sizes.

    Extrapolation check (the paper's protocol): the law is fitted on every run of the
    smaller sizes and predicts every run of the largest size N_max (all its mixtures and
    token counts); reported as MAE, mean relative error and Spearman rank correlation
    over the largest size's mixtures at its final D. Then the law fitted on all sizes is
    minimised over the constrained simplex at the target model's (N, D).
    """
    from scipy.stats import spearmanr
    n, d, h, y = (np.asarray(a, np.float64) for a in (n, d, h, y))
    big = n == n.max()
    if big.all():
        raise FitError("the scaling-law search needs proxies of at least 2 model sizes")
    held = fit_scaling_law(kind, n[~big], d[~big], h[~big], y[~big], restarts=restarts,
                           seed=seed)
    pred_big = held.predict(n[big], d[big], h[big])
    last = big & (d == d[big].max())
    pred_last = held.predict(n[last], d[last], h[last])
    law = fit_scaling_law(kind, n, d, h, y, restarts=restarts, seed=seed)
    resid = law.predict(n, d, h) - y
    w, val = minimise_on_simplex(
        lambda x: law.predict(np.array([target_n]), np.array([target_d]), x[None])[0],
        cons.lo, cons.hi, starts=list(h[last][np.argsort(y[last])[:3]]), seed=seed)
    with warnings.catch_warnings():   # a law flat in h predicts ties: Spearman is NaN
        warnings.simplefilter("ignore")
        rho = spearmanr(pred_last, y[last]).statistic if last.sum() > 2 else float("nan")
    out = {"regressor": f"scaling_law_{kind}", "weights": w, "predicted": val,
           "target_N": float(target_n), "target_D": float(target_d),
           "residual_rms": float(np.sqrt(np.mean(resid ** 2))), "converged": law.converged,
           "params": law.params.tolist(),
           "extrapolation": {
               "held_out_N": float(n.max()), "fit_N": sorted(set(n[~big].tolist())),
               "runs_fitted": int((~big).sum()), "runs_held_out": int(big.sum()),
               "mae_all_D": float(np.abs(pred_big - y[big]).mean()),
               "mae": float(np.abs(pred_last - y[last]).mean()),
               "rel_err_mean": float(np.mean(np.abs(pred_last - y[last]) / y[last])),
               "spearman": float(rho)},
           # the fit-quality plot: the held-out largest size at its final D
           "cv": {"pred": pred_last.tolist(), "actual": y[last].tolist(),
                  "spearman": float(rho), "mae": float(np.abs(pred_last - y[last]).mean())}}
    if not law.converged:
        out["warning"] = (f"the least-squares fit of the {kind} law did not report "
                          f"convergence; train residual RMS {out['residual_rms']:.4g}")
    return out
