"""Data mixing for supervised fine-tuning (Li, Liu & Xing, ICML 2025, arXiv 2508.11953).

Each domain's fine-tuning validation loss is a scaling law in *effective data*: the
domain's own tokens plus tokens transferred from the other domains. For a run with
x_j tokens of domain j (x = w D for mixture w and budget D)::

    L_i(x)     = c_i + a_i (Deff_i)^(-b_i)
    Deff_i(x)  = x_i + sum_{j != i} kappa_ij x_j^rho_i        (0 < rho_i < 1)

kappa (k x k, zero diagonal) is the transfer matrix. The paper gives no code and its
exact transfer form is recorded only from a secondary summary of it (unverified
against the paper's text): the sublinear transfer
exponent is taken per target domain (rho_i), kappa_ij >= 0, and tokens are measured
in units of ``scale`` (the mean total tokens of the fitted runs) so the parameters
are O(1). Fitting: one law per domain by :func:`mixjax.search.laws.fit_huber`
(Huber least squares from random starts), all positive parameters as logs and rho_i
through a logistic. Each domain has k + 3 parameters and needs at least k + 4 runs;
the paper's design perturbs one domain's amount at a time, which separates its own
term from the transfer terms.

Optimal weights (:func:`optimal_weights`): minimise ``sum_i pi_i L_i(w D)`` over the
(box-constrained) simplex at budget D with :func:`mixjax.search.laws.minimise_on_simplex`.
With kappa >= 0 and rho < 1, Deff_i is concave in w and ``a u^-b`` is convex and
decreasing, so every L_i is convex in w and the optimum is global (the paper's
guarantee).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mixjax.search.laws import fit_huber, minimise_on_simplex
from mixjax.search.regmix import FitError


def _unpack(p: np.ndarray, i: int, k: int):
    c, loga, logb, s = p[:4]
    kap = np.zeros(k)
    kap[np.arange(k) != i] = np.exp(p[4:])
    return c, np.exp(loga), np.exp(logb), 1.0 / (1.0 + np.exp(-s)), kap


def effective_data(p: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
    """Deff_i of runs x (float[P, k], in units of the law's scale)."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    _, _, _, rho, kap = _unpack(p, i, x.shape[1])
    return x[:, i] + np.power(np.maximum(x, 0.0), rho) @ kap


def domain_predict(p: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
    """L_i of runs x; p = [c, log a, log b, logit rho, log kappa_ij (j != i)]."""
    c, a, b, _, _ = _unpack(p, i, np.atleast_2d(x).shape[1])
    eff = np.maximum(effective_data(p, i, x), 1e-12)
    return c + a * np.exp(-b * np.log(eff))


@dataclasses.dataclass
class SFTLaw:
    """One fitted law per domain; tokens are divided by ``scale`` before the law."""
    params: list
    scale: float
    residual_rms: list
    converged: bool

    @property
    def k(self) -> int:
        return len(self.params)

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """float[P, k] per-domain losses of runs with tokens float[P, k]."""
        x = np.atleast_2d(np.asarray(tokens, np.float64)) / self.scale
        return np.stack([domain_predict(p, i, x) for i, p in enumerate(self.params)], axis=1)

    def transfer(self) -> np.ndarray:
        """kappa (k x k): row i = target domain, column j = source domain."""
        return np.stack([_unpack(p, i, self.k)[4] for i, p in enumerate(self.params)])

    def as_dict(self) -> dict:
        rows = [_unpack(p, i, self.k) for i, p in enumerate(self.params)]
        return {"c": [float(r[0]) for r in rows], "a": [float(r[1]) for r in rows],
                "b": [float(r[2]) for r in rows], "rho": [float(r[3]) for r in rows],
                "kappa": self.transfer().tolist(), "scale": self.scale,
                "residual_rms": self.residual_rms, "converged": self.converged}


def fit_sft_law(tokens: np.ndarray, losses: np.ndarray, *, restarts: int = 16, seed: int = 0,
                delta: float = 1e-3) -> SFTLaw:
    """Fits the law of every domain from runs: tokens float[P, k] -> losses float[P, k]."""
    x, y = np.asarray(tokens, np.float64), np.asarray(losses, np.float64)
    if x.ndim != 2 or y.shape != x.shape:
        raise FitError(f"the SFT law needs tokens and losses of the same shape [runs, domains], "
                       f"got {x.shape} and {y.shape}")
    p_runs, k = x.shape
    if np.any(x < 0) or np.any(x.sum(axis=1) <= 0):
        raise FitError("the SFT law needs non-negative token counts with a positive total per run")
    if p_runs < k + 4:
        raise FitError(f"the SFT law has {k + 3} parameters per domain for {k} domains: it "
                       f"needs at least {k + 4} runs, got {p_runs}")
    scale = float(x.sum(axis=1).mean())
    x = x / scale
    params, rms_all, ok_all = [], [], True
    for i in range(k):
        yi = y[:, i]
        lo, spread = float(yi.min()), max(float(yi.max() - yi.min()), 1e-3)

        def init(rng, lo=lo, spread=spread):
            return np.array([lo - spread * rng.uniform(0.1, 2.0), np.log(spread),
                             np.log(rng.uniform(0.1, 1.0)), rng.normal(0.0, 1.0),
                             *np.log(rng.uniform(0.01, 1.0, k - 1))])

        p, _, rms, ok = fit_huber(lambda q, i=i, yi=yi: domain_predict(q, i, x) - yi, init,
                                  k + 3, restarts=restarts, seed=seed + i, delta=delta,
                                  what=f"SFT law of domain {i}")
        params.append(p)
        rms_all.append(rms)
        ok_all &= ok
    return SFTLaw(params, scale, rms_all, bool(ok_all))


def optimal_weights(law: SFTLaw, budget: float, pi: np.ndarray | None = None, *, lo=None,
                    hi=None, seed: int = 0) -> tuple[np.ndarray, float]:
    """argmin over the simplex of ``sum_i pi_i L_i(w budget)`` (uniform pi by default)."""
    k = law.k
    pi = np.full(k, 1.0 / k) if pi is None else np.asarray(pi, np.float64)
    lo = np.zeros(k) if lo is None else np.asarray(lo, np.float64)
    hi = np.ones(k) if hi is None else np.asarray(hi, np.float64)
    return minimise_on_simplex(lambda w: float(law.predict(w[None] * budget)[0] @ pi), lo, hi,
                               seed=seed)
