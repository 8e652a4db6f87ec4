"""Statistics of a multi-seed comparison: mean ± standard error, paired t-intervals.

For one method and ``n`` seeds with values ``x_1..x_n`` (e.g. a domain's
validation perplexity):

    mean = (1/n) sum_i x_i,    SE = s / sqrt(n),    s^2 = sum_i (x_i - mean)^2 / (n - 1)

A method ``m`` against the baseline ``b`` is compared *paired by seed* (both
ran with the same seed: same initialisation and the same data seed), on the
differences ``d_i = x^m_i - x^b_i``:

    mean_d ± t_{1 - alpha/2, n-1} * s_d / sqrt(n)

(Student's t quantile from :func:`scipy.stats.t.ppf`). Pairing removes the
seed-to-seed variation the two runs share, which on small models is as large
as the method differences themselves. With ``n = 1`` no interval exists (NaN).
"Beats the baseline on a domain" means the whole interval lies below 0 (lower
perplexity is better).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class MeanSE:
    mean: float
    se: float       # NaN when n < 2
    n: int

    def fmt(self, digits: int = 3) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        if self.n < 2 or not math.isfinite(self.se):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class PairedInterval:
    mean: float
    low: float      # NaN when n < 2
    high: float
    n: int
    level: float

    @property
    def below_zero(self) -> bool:
        return math.isfinite(self.high) and self.high < 0

    @property
    def above_zero(self) -> bool:
        return math.isfinite(self.low) and self.low > 0

    def fmt(self, digits: int = 3) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        if not math.isfinite(self.low):
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_se(values: Sequence[float]) -> MeanSE:
    """Mean and standard error of the mean (sample sd with n - 1) over seeds."""
    x = np.asarray(values, np.float64)
    n = len(x)
    if n == 0:
        return MeanSE(math.nan, math.nan, 0)
    se = float(np.std(x, ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return MeanSE(float(np.mean(x)), se, n)


def paired_interval(method: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> PairedInterval:
    """Paired t-interval of ``mean(method - baseline)`` (values matched by seed, same order)."""
    from scipy import stats
    a, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    d = a - b
    n = len(d)
    if n == 0:
        return PairedInterval(math.nan, math.nan, math.nan, 0, level)
    mean = float(d.mean())
    if n < 2:
        return PairedInterval(mean, math.nan, math.nan, n, level)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(d, ddof=1) / math.sqrt(n))
    return PairedInterval(mean, mean - half, mean + half, n, level)


def time_averaged(steps: Sequence[int], weights: Sequence[Sequence[float]], total_steps: int) -> np.ndarray:
    """Time average of a piecewise-constant weight trajectory: ``w_k`` holds on
    ``[steps_k, steps_{k+1})`` (the last one until ``total_steps``):
    ``sum_k w_k (s_{k+1} - s_k) / total_steps``."""
    s = np.asarray(list(steps) + [total_steps], np.float64)
    w = np.asarray(weights, np.float64)
    span = np.clip(np.diff(s), 0, None)
    if span.sum() <= 0:
        return w[-1]
    return (w * span[:, None]).sum(0) / span.sum()
