"""CausIRL-CORAL / CausIRL-MMD (Chevalley et al., "Invariant causal mechanisms through
distribution matching", arXiv 2206.11646), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``AbstractCausIRL``, commit b93c22a).

Each step, every training env's features z_e f32[b, D] are cut at a uniform random index
s_e in {0, ..., b - 1} (``np.random.randint(0, b)``); A = concat_e z_e[:s_e],
B = concat_e z_e[s_e:]. With d the CORAL distance (``coral.coral_distance``: mean squared
difference of means + of unbiased covariances) or the 7-bandwidth Gaussian-kernel MMD
(``mmd.mmd_distance``):

    L = mean_e CE_e + mmd_gamma * nan_to_num(d(A, B))   if |A| > 1 and |B| > 1, else mean_e CE_e.

A and B have data-dependent sizes, so d is computed on the fixed-size concatenation with
0/1 weights (``masked_coral``/``masked_mmd``), which equals d on the cut sets.
Hyperparameters: mmd_gamma 1.0 (10^U(-1,1)). The reported ``loss`` is the CE part (DomainBed).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy
from mixjax.dg.algorithms.mmd import gaussian_kernel


def masked_coral(z, ma, mb):
    """CORAL distance between rows of ``z`` f32[N, D] with weight ``ma`` and those with ``mb``."""

    def moments(m):
        n = m.sum()
        mu = (m[:, None] * z).sum(0, keepdims=True) / n
        c = (z - mu) * m[:, None]
        return mu, c.T @ c / (n - 1)

    mu_a, cov_a = moments(ma)
    mu_b, cov_b = moments(mb)
    return ((mu_a - mu_b) ** 2).mean() + ((cov_a - cov_b) ** 2).mean()


def masked_mmd(z, ma, mb):
    """Gaussian-kernel MMD (DomainBed's) between the two weighted row sets of ``z``."""
    k = gaussian_kernel(z, z)
    mean = lambda u, v: (u[:, None] * v[None, :] * k).sum() / (u.sum() * v.sum())  # noqa: E731
    return mean(ma, ma) + mean(mb, mb) - 2.0 * mean(ma, mb)


def split_masks(cuts, b):
    """0/1 f32[K * b] masks of A = rows j < s_e and B = rows j >= s_e of each env."""
    first = (jnp.arange(b)[None, :] < cuts[:, None]).reshape(-1).astype(jnp.float32)
    return first, 1.0 - first


def causirl_penalty(z, cuts, distance):
    """z f32[K, b, D], cuts int32[K] -> nan_to_num(d(A, B)), or 0 unless both sets have > 1 row."""
    k, b = z.shape[:2]
    ma, mb = split_masks(cuts, b)
    ok = (ma.sum() > 1) & (mb.sum() > 1)
    # evaluate on safe masks where the cut is degenerate, so no NaN reaches the gradient
    safe_a = jnp.where(ok, ma, jnp.ones_like(ma))
    safe_b = jnp.where(ok, mb, jnp.ones_like(mb))
    d = jnp.nan_to_num(distance(z.reshape(k * b, -1), safe_a, safe_b))
    return jnp.where(ok, d, 0.0)


class CausIRL(Algorithm):
    distance = staticmethod(masked_coral)

    @classmethod
    def own_hparams(cls, small):
        return {"mmd_gamma": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1))}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        nll = cross_entropy(self.classify(params, z).reshape(k, b, -1), ys)
        cuts = jax.random.randint(key, (k,), 0, b)
        penalty = causirl_penalty(z.reshape(k, b, -1), cuts, self.distance)
        return nll + hp["mmd_gamma"] * penalty, {"loss": nll, "penalty": penalty}


@register
class CausIRLCORAL(CausIRL):
    name = "causirl_coral"
    distance = staticmethod(masked_coral)


@register
class CausIRLMMD(CausIRL):
    name = "causirl_mmd"
    distance = staticmethod(masked_mmd)
