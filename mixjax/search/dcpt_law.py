"""The D-CPT Law (Que et al., NeurIPS 2024, arXiv 2406.01375) and its three usages.

Continual pre-training (CPT) of a pre-trained model on a mixture of a general corpus
and a domain corpus, with the domain ratio ``r`` (the general ratio is ``1 - r``).
The paper fits one law per validation corpus, each in the ratio of *its own* corpus
(its Fig. 1: L_g against r_g, L_d against r_d)::

    L(N, D, r) = E + A / N^alpha + B r^eta / D^beta + C / (r + eps)^gamma

(the paper's chosen parameterisation, §3.2; ``eps`` keeps ``r = 0`` finite and is a
fixed setting here, default 0.01). The general loss is ``L_g(N, D, 1 - r)`` and the
domain loss ``L_d(N, D, r)``. No public code of the paper was found (searched the
indexed GitHub code, issues and pages for "D-CPT law"; only summaries exist), so the
law is implemented as written in the paper (its forms as the paper states them).

Cross-domain D-CPT Law (paper §3.3): the domain losses of several domains share
every parameter except a domain-specific learnable coefficient K_j entering as
``F / K_j^mu``. With K_j free per domain, E, F and mu are not identifiable from the
losses (``E + F K^-mu`` takes any value through K), so here E = 0 and F = mu = 1:
``L_j = A/N^alpha + B r^eta/D^beta + C/(r+eps)^gamma + 1/K_j``. A new domain is
predicted from a few runs by fitting only its K with the shared parameters frozen
(the paper's "~1% of the cost" use). The paper's alternative of computing K from
measured quantities of the domain is not implemented (its exact form is unverified).

Fitting reuses the project's fitter (:func:`mixjax.search.laws.fit_huber`:
scipy ``least_squares`` with a Huber loss from several random initialisations, the
paper's Huber + L-BFGS-from-a-grid protocol in spirit). Positive parameters and the
exponents alpha, beta, gamma are fitted as logs; eta is free.

The three usages (paper §4.1 trade-off, and the ratio for a target domain loss):

* :func:`ratio_under_general_budget`: the domain ratio r minimising L_d(N, D, r)
  subject to L_g(N, D, 1 - r) <= budget (e.g. ``(1 + tau)`` times the general loss
  of general-only continuation, :func:`general_budget`);
* :func:`ratio_for_domain_loss`: the smallest r with L_d(N, D, r) <= target;
* :func:`tradeoff_curve`: (r, L_g, L_d) over a grid of r with the Pareto-optimal
  points marked.

Each scans a dense grid of r in [0, 1] and refines with scipy (``brentq`` on a
constraint boundary, ``minimize_scalar`` inside an interior bracket).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from mixjax.search.laws import fit_huber
from mixjax.search.regmix import FitError

NAMES = ("E", "logA", "logalpha", "logB", "eta", "logbeta", "logC", "loggamma")
SHARED = NAMES[1:]     # the cross-domain law's shared parameters (E folded into 1/K_j)


def _terms(q: np.ndarray, n, d, r, eps: float) -> np.ndarray:
    """A/N^alpha + B r^eta/D^beta + C/(r+eps)^gamma; q = params[1:] (:data:`SHARED`)."""
    loga, logal, logb, eta, logbe, logc, logg = q
    ln, ld = np.log(np.asarray(n, np.float64)), np.log(np.asarray(d, np.float64))
    r = np.asarray(r, np.float64)
    lr = np.log(np.maximum(r, 1e-300))
    with np.errstate(over="ignore", invalid="ignore"):
        t_n = np.exp(np.clip(loga - np.exp(logal) * ln, -700, 700))
        t_d = np.exp(np.clip(logb + eta * lr - np.exp(logbe) * ld, -700, 700))
        t_r = np.exp(np.clip(logc - np.exp(logg) * np.log(r + eps), -700, 700))
    return t_n + t_d + t_r


def dcpt_predict(params: np.ndarray, n, d, r, eps: float = 0.01) -> np.ndarray:
    """The D-CPT law at (N, D, r); params in the order of :data:`NAMES`."""
    return params[0] + _terms(np.asarray(params[1:]), n, d, r, eps)


@dataclasses.dataclass
class DCPTLaw:
    """A fitted law of one validation corpus, in the ratio of that corpus."""
    params: np.ndarray
    eps: float
    cost: float = 0.0
    residual_rms: float = 0.0
    converged: bool = True

    def predict(self, n, d, r) -> np.ndarray:
        return dcpt_predict(self.params, n, d, r, self.eps)

    def as_dict(self) -> dict:
        return {"params": dict(zip(NAMES, map(float, self.params))), "eps": self.eps,
                "residual_rms": self.residual_rms, "converged": self.converged}


def _check(n, d, r, y, m: int, what: str):
    n, d, r, y = (np.asarray(a, np.float64).ravel() for a in (n, d, r, y))
    if not (len(n) == len(d) == len(r) == len(y)):
        raise FitError(f"{what}: N, D, r and losses differ in length "
                       f"({len(n)}, {len(d)}, {len(r)}, {len(y)})")
    if np.any((r < 0) | (r > 1)):
        raise FitError(f"{what}: mixture ratios must lie in [0, 1], got {r.min():g}..{r.max():g}")
    if np.any(n <= 0) or np.any(d <= 0):
        raise FitError(f"{what}: model sizes N and token counts D must be positive")
    if len(y) < m + 1:
        raise FitError(f"{what} has {m} parameters: it needs at least {m + 1} runs, got {len(y)}")
    return n, d, r, y


def _init_shared(rng, ln, ld, scale: float) -> list:
    al, be, ga = rng.uniform(0.1, 0.8, 3)
    return [np.log(scale) + al * ln.mean() + rng.normal(0, 1), np.log(al),
            np.log(scale) + be * ld.mean() + rng.normal(0, 1), rng.uniform(-0.5, 1.0),
            np.log(be), np.log(scale * rng.uniform(0.05, 1.0)), np.log(ga)]


def fit_dcpt(n, d, r, y, *, eps: float = 0.01, restarts: int = 16, seed: int = 0,
             delta: float = 1e-3) -> DCPTLaw:
    """Fits the D-CPT law to runs (N_i, D_i, r_i) -> loss y_i of one validation corpus."""
    n, d, r, y = _check(n, d, r, y, len(NAMES), "the D-CPT law")
    ln, ld = np.log(n), np.log(d)
    spread = max(float(y.max() - y.min()), 1e-3)

    def init(rng):
        return np.array([float(y.min()) - spread * rng.uniform(0.5, 2.0),
                         *_init_shared(rng, ln, ld, spread)])

    p, cost, rms, ok = fit_huber(lambda q: dcpt_predict(q, n, d, r, eps) - y, init,
                                 len(NAMES), restarts=restarts, seed=seed, delta=delta,
                                 what="D-CPT law")
    return DCPTLaw(p, eps, cost, rms, ok)


# ----------------------------------------------------------------- cross-domain law
@dataclasses.dataclass
class CrossDomainLaw:
    """Shared parameters (:data:`SHARED`) and one coefficient K_j per fitted domain."""
    shared: np.ndarray
    log_k: dict
    eps: float
    residual_rms: float = 0.0
    converged: bool = True

    def predict(self, domain, n, d, r) -> np.ndarray:
        return np.exp(-self.log_k[domain]) + _terms(self.shared, n, d, r, self.eps)

    def as_dict(self) -> dict:
        return {"shared": dict(zip(SHARED, map(float, self.shared))),
                "K": {k: float(np.exp(v)) for k, v in self.log_k.items()}, "eps": self.eps,
                "residual_rms": self.residual_rms, "converged": self.converged}


def fit_cross_domain(domains, n, d, r, y, *, eps: float = 0.01, restarts: int = 16,
                     seed: int = 0, delta: float = 1e-3) -> CrossDomainLaw:
    """Fits the cross-domain law to domain-loss runs of several domains (``domains[i]``
    names run i's domain)."""
    names = sorted(set(domains))
    idx = np.array([names.index(x) for x in domains])
    m = len(SHARED) + len(names)
    n, d, r, y = _check(n, d, r, y, m, "the cross-domain D-CPT law")
    if len(names) < 2:
        raise FitError("the cross-domain D-CPT law needs runs of at least 2 domains")
    # start from a single-domain fit of the domain with most runs (E free), each other
    # domain's offset shifted by its mean gap to that domain on the runs they share
    ref = int(np.argmax(np.bincount(idx)))
    one = fit_dcpt(n[idx == ref], d[idx == ref], r[idx == ref], y[idx == ref], eps=eps,
                   restarts=restarts, seed=seed, delta=delta)
    rest = _terms(one.params[1:], n, d, r, eps)
    off = np.array([max(float(np.median(y[idx == j] - rest[idx == j])), 1e-3)
                    for j in range(len(names))])

    def pred(q):
        return np.exp(-q[len(SHARED):])[idx] + _terms(q[:len(SHARED)], n, d, r, eps)

    def init(rng):
        jitter = rng.normal(0, 0.05, m) if init.calls else np.zeros(m)
        init.calls += 1
        return np.concatenate([one.params[1:], -np.log(off)]) + jitter
    init.calls = 0

    p, cost, rms, ok = fit_huber(lambda q: pred(q) - y, init, m, restarts=restarts,
                                 seed=seed, delta=delta, what="cross-domain D-CPT law")
    return CrossDomainLaw(p[:len(SHARED)], dict(zip(names, p[len(SHARED):].tolist())), eps,
                          rms, ok)


def fit_new_domain(law: CrossDomainLaw, name: str, n, d, r, y, *, delta: float = 1e-3,
                   restarts: int = 4, seed: int = 0) -> CrossDomainLaw:
    """Fits only K of a new domain from a few runs, the shared parameters frozen."""
    n, d, r, y = _check(n, d, r, y, 1, f"K of domain {name!r}")
    rest = _terms(law.shared, n, d, r, law.eps)
    gap = float(np.median(y - rest))
    if not gap > 0:
        raise FitError(f"domain {name!r}: its losses lie below the shared law's terms "
                       f"(median gap {gap:.4g}); K = 1/gap needs a positive gap")

    def init(rng):
        return np.array([-np.log(gap) + rng.normal(0, 0.1)])

    p, _, _, _ = fit_huber(lambda q: np.exp(-q[0]) + rest - y, init, 1, restarts=restarts,
                           seed=seed, delta=delta, what=f"K of domain {name!r}")
    return dataclasses.replace(law, log_k={**law.log_k, name: float(p[0])})


# ------------------------------------------------------------------------- usages
def _grid(num: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, num)


def general_budget(general: DCPTLaw, n: float, d: float, tau: float) -> float:
    """``(1 + tau) L_g(N, D, r_g = 1)``: tau above general-only continuation."""
    return float((1.0 + tau) * general.predict(n, d, 1.0))


def ratio_under_general_budget(general: DCPTLaw, domain, n: float, d: float, budget: float,
                               *, num: int = 2001) -> tuple[float, float]:
    """``(r, L_d)``: r in [0, 1] minimising L_d(N, D, r) s.t. L_g(N, D, 1 - r) <= budget.

    ``domain`` is a DCPTLaw or any callable ``r -> L_d`` at this (N, D).
    """
    f_d = domain if callable(domain) and not isinstance(domain, DCPTLaw) else \
        (lambda x: domain.predict(n, d, x))

    def slack(x):
        return float(general.predict(n, d, 1.0 - x)) - budget

    rs = _grid(num)
    g = np.asarray(general.predict(n, d, 1.0 - rs)) - budget
    ld = np.asarray(f_d(rs), np.float64)
    ok = g <= 0
    if not ok.any():
        raise FitError(f"no domain ratio keeps the general loss within {budget:.4g} "
                       f"(its minimum over r is {budget + g.min():.4g})")
    i = int(np.argmin(np.where(ok, ld, np.inf)))
    # the best feasible grid point: refine towards the constraint boundary or inside
    for j in (i - 1, i + 1):
        if 0 <= j < num and not ok[j] and ld[j] < ld[i]:
            x = brentq(slack, min(rs[i], rs[j]), max(rs[i], rs[j]), xtol=1e-12)
            if slack(x) > 0:                # stay on the feasible side of the root
                x = rs[i]
            return float(x), float(f_d(np.array([x]))[0])
    lo, hi = rs[max(i - 1, 0)], rs[min(i + 1, num - 1)]
    if ok[max(i - 1, 0)] and ok[min(i + 1, num - 1)] and hi > lo:
        res = minimize_scalar(lambda x: float(f_d(np.array([x]))[0]), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-10})
        if res.fun <= ld[i] and slack(res.x) <= 0:
            return float(res.x), float(res.fun)
    return float(rs[i]), float(ld[i])


def ratio_for_domain_loss(domain: DCPTLaw, n: float, d: float, target: float, *,
                          num: int = 2001) -> float:
    """The smallest r in [0, 1] with L_d(N, D, r) <= target (least domain data)."""
    rs = _grid(num)
    ld = np.asarray(domain.predict(n, d, rs)) - target
    hit = np.flatnonzero(ld <= 0)
    if not len(hit):
        raise FitError(f"the domain loss {target:.4g} is not reached at any ratio "
                       f"(the law's minimum over r is {target + ld.min():.4g})")
    i = int(hit[0])
    if i == 0:
        return 0.0
    x = brentq(lambda t: float(domain.predict(n, d, t)) - target, rs[i - 1], rs[i],
               xtol=1e-12)
    return float(x) if float(domain.predict(n, d, x)) <= target else float(rs[i])


def tradeoff_curve(general: DCPTLaw, domain: DCPTLaw, n: float, d: float, *,
                   num: int = 101) -> dict:
    """(r, L_g(1 - r), L_d(r)) over r in [0, 1]; ``pareto`` marks the points no other
    grid point beats on both losses."""
    rs = _grid(num)
    lg = np.asarray(general.predict(n, d, 1.0 - rs), np.float64)
    ld = np.asarray(domain.predict(n, d, rs), np.float64)
    dominated = ((lg[None, :] <= lg[:, None]) & (ld[None, :] <= ld[:, None])
                 & ((lg[None, :] < lg[:, None]) | (ld[None, :] < ld[:, None]))).any(axis=1)
    return {"r": rs.tolist(), "general": lg.tolist(), "domain": ld.tolist(),
            "pareto": (~dominated).tolist()}
