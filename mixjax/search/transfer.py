"""Seeds as a swarm axis, and whether a mixture ranking at proxy scale holds at target scale.

Seeds as a swarm: :func:`seed_rows` repeats each mixture ``seeds`` times along the
proxy axis (mixture-major). Every swarm row p has its own seed
(``swarm_mesh.proxy_seed(train.seed, p)``: model init and batch composition), so the
repeats of one mixture are independent seeds trained in the same compiled step; the
per-mixture mean and spread over seeds come from one swarm. The proxies share the
per-domain read pipelines (swarm_batches.py), so a proxy's rows are not those of a
separate ``mixjax train`` run with the same seed: the seeds are exchangeable draws,
not replays of separate runs.

Rank transfer (:func:`rank_transfer`; RegMix's rank-invariance check, arXiv 2407.01492
§4): given final losses float[M, S_p] of M mixtures at proxy scale and float[M, S_t] at
target scale (seeds on the second axis), the per-mixture seed means are ranked at both
scales; Spearman's rho and Kendall's tau (scipy.stats) between them, and the regret of
choosing at proxy scale: target mean of the proxy-scale argmin minus the best target
mean. Intervals: a percentile bootstrap that resamples mixtures and, within each
mixture, the seeds of each scale (``boot`` replicates, 90% by default).
"""

from __future__ import annotations

import warnings

import numpy as np


def seed_rows(mixtures: np.ndarray, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows float[M*seeds, K], mixture index, seed index)``, mixture-major."""
    mixtures = np.asarray(mixtures, np.float64)
    if seeds < 1:
        raise ValueError(f"seeds per mixture must be >= 1, got {seeds}")
    m = len(mixtures)
    return (np.repeat(mixtures, seeds, axis=0), np.repeat(np.arange(m), seeds),
            np.tile(np.arange(seeds), m))


def by_mixture(values: np.ndarray, mix_idx: np.ndarray, seeds: int) -> np.ndarray:
    """float[M, seeds] from per-row values laid out by :func:`seed_rows`."""
    values = np.asarray(values, np.float64)
    m = int(mix_idx.max()) + 1
    return values.reshape(m, seeds)


def _stats(p_mean: np.ndarray, t_mean: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr
    with warnings.catch_warnings():       # constant input: NaN correlation, not an error
        warnings.simplefilter("ignore")
        rho = float(spearmanr(p_mean, t_mean).statistic)
        tau = float(kendalltau(p_mean, t_mean).statistic)
    pick = int(np.argmin(p_mean))
    return {"spearman": rho, "kendall": tau, "picked": pick, "best": int(np.argmin(t_mean)),
            "regret": float(t_mean[pick] - t_mean.min()),
            "regret_rel": float((t_mean[pick] - t_mean.min()) / t_mean.min())}


def rank_transfer(proxy: np.ndarray, target: np.ndarray, *, boot: int = 1000, level: float = 0.9,
                  seed: int = 0) -> dict:
    """Rank correlation and regret between scales with bootstrap intervals (docstring)."""
    proxy, target = np.asarray(proxy, np.float64), np.asarray(target, np.float64)
    if proxy.ndim != 2 or target.ndim != 2 or len(proxy) != len(target):
        raise ValueError(f"proxy and target losses must be [mixtures, seeds] with the same "
                         f"mixtures, got {proxy.shape} and {target.shape}")
    m = len(proxy)
    if m < 3:
        raise ValueError(f"a rank correlation needs >= 3 mixtures, got {m}")
    out = _stats(proxy.mean(axis=1), target.mean(axis=1))
    out.update(mixtures=m, proxy_seeds=proxy.shape[1], target_seeds=target.shape[1],
               proxy_mean=proxy.mean(axis=1).tolist(), target_mean=target.mean(axis=1).tolist(),
               target_std=(target.std(axis=1, ddof=1) if target.shape[1] > 1
                           else np.zeros(m)).tolist())
    if boot:
        rng = np.random.default_rng(seed)
        reps = {k: [] for k in ("spearman", "kendall", "regret", "regret_rel")}
        for _ in range(boot):
            idx = rng.integers(0, m, m)
            if len(np.unique(idx)) < 3:
                continue
            ps = proxy[idx][np.arange(m)[:, None], rng.integers(0, proxy.shape[1], proxy.shape)]
            ts = target[idx][np.arange(m)[:, None],
                             rng.integers(0, target.shape[1], target.shape)]
            s = _stats(ps.mean(axis=1), ts.mean(axis=1))
            for k in reps:
                reps[k].append(s[k])
        a = (1 - level) / 2
        out["bootstrap"] = {"num": len(reps["spearman"]), "level": level, **{
            k: [float(np.nanquantile(v, a)), float(np.nanquantile(v, 1 - a))]
            for k, v in reps.items()}}
    return out
