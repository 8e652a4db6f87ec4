"""Candidate mixtures for a proxy swarm, and the constraints they must satisfy.

Every design returns float64[P, K] rows on the simplex that satisfy the box
``lo_d <= h_d <= hi_d`` of :class:`Constraints`:

* ``regmix``: RegMix's generator (Liu et al. 2025, arXiv 2407.01492;
  ``sail-sg/regmix: mixture_config/synthesize_mixture.py``). The upper bound is
  ``min(max_usage * prior_d, 1)`` from the *untempered* token prior; the prior is
  then tempered (``prior^0.5``, renormalised); each attempt draws one
  ``Dirichlet(prior * s)`` for each of 15 strengths ``s`` log-spaced in [0.1, 5]
  and keeps one of them at random; attempts outside the bounds are rejected;
  entries below ``minimum`` become 0, the row is renormalised and rounded to
  multiples of ``minimum``; duplicates (L1 distance <= 1e-5) are dropped and
  ``P`` rows are chosen at random. Reference defaults: seed 42, temperature 0.5,
  max_usage 15, minimum 2e-4, 100 attempts per wanted row.
* ``dirichlet``: ``Dirichlet(alpha * 1)`` (uniform on the simplex for alpha = 1),
  rejection to the box.
* ``lhs``: Latin hypercube on the simplex: a Latin hypercube sample ``u`` in
  [0, 1]^K (scipy.stats.qmc) mapped by ``-log u`` normalised (the exponential
  spacing construction of a uniform Dirichlet point), so the marginal strata of
  the underlying uniforms are covered evenly; rejection to the box.
* ``onehot``: the K vertices (for one-domain laws) then, if more rows are wanted,
  the K leave-one-out mixtures (uniform over the other K-1 domains).

Constraints (:class:`Constraints`): per-domain ``min``/``max`` weights and "at most
``E`` epochs of each domain for a target budget of ``T`` tokens":
``h_d * T <= E * n_d``, i.e. ``hi_d = min(hi_d, E n_d / T)``. An empty feasible
set (``sum lo > 1`` or ``sum hi < 1`` or ``lo_d > hi_d``) is an error naming the
culprit.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

DESIGNS = ("regmix", "dirichlet", "lhs", "onehot")


class DesignError(ValueError):
    """A design or its constraints cannot be satisfied."""


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Box constraints on the simplex (float64[K] lower and upper bounds)."""

    domains: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray

    def holds(self, h: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """bool[P]: rows on the simplex inside the box."""
        h = np.atleast_2d(h)
        return (np.all(h >= self.lo - tol, axis=1) & np.all(h <= self.hi + tol, axis=1)
                & (np.abs(h.sum(axis=1) - 1.0) <= 1e-6))


def make_constraints(domains: Sequence[str], *, min_weight: Mapping[str, float] | None = None,
                     max_weight: Mapping[str, float] | None = None,
                     max_epochs: float | None = None, budget_tokens: float | None = None,
                     token_counts: Sequence[float] | None = None) -> Constraints:
    """Builds and checks the box; raises DesignError naming a culprit if it is empty."""
    domains = tuple(domains)
    k = len(domains)
    lo, hi = np.zeros(k), np.ones(k)
    for what, spec, arr in (("min_weight", min_weight, lo), ("max_weight", max_weight, hi)):
        for d, v in (spec or {}).items():
            if d not in domains:
                raise DesignError(f"{what}: unknown domain {d!r}; known: {list(domains)}")
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise DesignError(f"{what}[{d!r}] = {v!r} is not in [0, 1]")
            arr[domains.index(d)] = float(v)
    if max_epochs is not None:
        if budget_tokens is None or token_counts is None:
            raise DesignError("max_epochs needs budget_tokens (the target run's tokens) and "
                              "the domains' token counts")
        if not max_epochs > 0 or not budget_tokens > 0:
            raise DesignError(f"max_epochs ({max_epochs}) and budget_tokens ({budget_tokens}) "
                              "must be > 0")
        n = np.asarray(token_counts, np.float64)
        hi = np.minimum(hi, max_epochs * n / float(budget_tokens))
    bad = [d for d, a, b in zip(domains, lo, hi) if a > b + 1e-12]
    if bad:
        i = domains.index(bad[0])
        raise DesignError(f"constraints: domain {bad[0]!r} has min {lo[i]:.4g} > max {hi[i]:.4g}"
                          " (max includes the max_epochs bound)")
    if lo.sum() > 1.0 + 1e-9:
        raise DesignError(f"constraints make the simplex empty: the minimum weights sum to "
                          f"{lo.sum():.4g} > 1")
    if hi.sum() < 1.0 - 1e-9:
        raise DesignError(f"constraints make the simplex empty: the maximum weights (after the "
                          f"max_epochs bound) sum to {hi.sum():.4g} < 1; per domain: "
                          + ", ".join(f"{d} {h:.3g}" for d, h in zip(domains, hi)))
    return Constraints(domains, lo, hi)


def _reject(rows: np.ndarray, cons: Constraints | None) -> np.ndarray:
    return rows if cons is None else rows[cons.holds(rows)]


def _take(rows: np.ndarray, n: int, what: str, rng: np.random.Generator | None = None) -> np.ndarray:
    if len(rows) < n:
        raise DesignError(f"design {what!r}: only {len(rows)} feasible distinct mixtures found, "
                          f"{n} wanted; loosen the constraints or ask for fewer proxies")
    if rng is None:
        return rows[:n]
    return rows[np.sort(rng.choice(len(rows), n, replace=False))]


def dedupe(rows: np.ndarray, threshold: float = 1e-5) -> np.ndarray:
    """Rows sorted lexicographically, a row dropped when within ``threshold`` (L1) of the
    last kept one (``sort_and_deduplicate`` of the RegMix generator)."""
    if len(rows) == 0:
        return rows
    rows = rows[np.lexsort(rows.T)]
    kept = [rows[0]]
    for r in rows[1:]:
        if np.abs(r - kept[-1]).sum() > threshold:
            kept.append(r)
    return np.stack(kept)


def regmix(num: int, prior: Sequence[float], *, seed: int = 42, temperature: float = 0.5,
           min_strength: float = 0.1, max_strength: float = 5.0, num_strengths: int = 15,
           max_usage: float = 15.0, minimum: float = 2e-4, attempts_per_row: int = 100,
           constraints: Constraints | None = None) -> np.ndarray:
    """RegMix's Dirichlet generator (module docstring); float64[num, K]."""
    rng = np.random.default_rng(seed)
    prior = np.asarray(prior, np.float64)
    prior = prior / prior.sum()
    upper = np.minimum(prior * max_usage, 1.0)          # from the untempered prior
    if temperature < 1.0:
        prior = prior ** temperature
        prior = prior / prior.sum()
    strengths = np.logspace(np.log10(min_strength), np.log10(max_strength), num_strengths)
    n = num * attempts_per_row
    # One draw per strength per attempt, one of them kept at random (as the reference).
    pick = rng.integers(0, num_strengths, size=n)
    alpha = prior[None, :] * strengths[pick][:, None]
    rows = rng.gamma(alpha)
    rows = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1e-300)
    rows = rows[np.all(rows <= upper[None, :], axis=1) & np.isfinite(rows).all(axis=1)]
    rows = np.where(rows < minimum, 0.0, rows)
    rows = rows[rows.sum(axis=1) > 0]
    rows = rows / rows.sum(axis=1, keepdims=True)
    rows = np.round(rows / minimum) * minimum
    rows = rows / rows.sum(axis=1, keepdims=True)   # rounding can leave the sum a grid step off
    rows = _reject(dedupe(rows), constraints)
    return _take(rows, num, "regmix", rng)


def dirichlet(num: int, k: int, *, alpha: float = 1.0, seed: int = 0,
              constraints: Constraints | None = None, oversample: int = 200) -> np.ndarray:
    """Rows of ``Dirichlet(alpha * 1_K)`` inside the box; float64[num, K]."""
    rng = np.random.default_rng(seed)
    rows = rng.dirichlet(np.full(k, alpha), size=num * oversample)
    return _take(_reject(rows, constraints), num, "dirichlet")


def lhs(num: int, k: int, *, seed: int = 0, constraints: Constraints | None = None,
        max_rounds: int = 200) -> np.ndarray:
    """Latin hypercube on the simplex (module docstring); float64[num, K].

    Each round draws a fresh ``num``-point Latin hypercube and keeps its feasible
    points until ``num`` are collected (with no constraints: one round, exactly a
    Latin hypercube).
    """
    from scipy.stats import qmc
    sampler = qmc.LatinHypercube(d=k, seed=seed)
    kept: list[np.ndarray] = []
    for _ in range(max_rounds):
        u = np.clip(sampler.random(num), 1e-12, 1.0)
        e = -np.log(u)
        rows = _reject(e / e.sum(axis=1, keepdims=True), constraints)
        kept.extend(rows)
        if len(kept) >= num:
            break
    return _take(np.array(kept).reshape(-1, k), num, "lhs")


def onehot(num: int, k: int, *, constraints: Constraints | None = None) -> np.ndarray:
    """Vertices, then leave-one-out mixtures; float64[num, K] (num <= 2K)."""
    rows = list(np.eye(k))
    if k > 1:
        rows += [(1.0 - np.eye(k)[i]) / (k - 1) for i in range(k)]
    rows = np.array(rows)
    if constraints is not None:
        bad = ~constraints.holds(rows[:num])
        if bad.any():
            raise DesignError(f"design 'onehot': mixture {int(np.argmax(bad))} "
                              f"{rows[int(np.argmax(bad))].round(3).tolist()} violates the "
                              "constraints; use lhs or dirichlet with constraints")
    return _take(rows, num, "onehot")


def make_design(name: str, num: int, domains: Sequence[str], *, prior: Sequence[float],
                seed: int = 0, constraints: Constraints | None = None,
                **kwargs) -> np.ndarray:
    """Dispatches to a design by name; ``prior`` = the domains' token shares."""
    k = len(tuple(domains))
    if num < 1:
        raise DesignError(f"the number of proxies must be >= 1, got {num}")
    if name == "regmix":
        return regmix(num, prior, seed=seed, constraints=constraints, **kwargs)
    if name == "dirichlet":
        return dirichlet(num, k, seed=seed, constraints=constraints, **kwargs)
    if name == "lhs":
        return lhs(num, k, seed=seed, constraints=constraints, **kwargs)
    if name == "onehot":
        return onehot(num, k, constraints=constraints)
    raise DesignError(f"unknown design {name!r}; known: {list(DESIGNS)}")
