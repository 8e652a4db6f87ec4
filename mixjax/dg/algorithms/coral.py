"""Deep CORAL (Sun & Saenko, 2016), DomainBed's form.

    L = mean_e CE_e + gamma * mean_{i<j} d(phi(x_i), phi(x_j)),
    d(a, b) = mean((mu_a - mu_b)^2) + mean((C_a - C_b)^2),

with C the feature covariance using n - 1. Default mmd_gamma 1.0 (10^U(-1,1)).
"""

import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy


def coral_distance(a, b):
    """a f32[n, D], b f32[m, D]."""
    mu_a, mu_b = a.mean(0, keepdims=True), b.mean(0, keepdims=True)
    ca, cb = a - mu_a, b - mu_b
    cov_a = ca.T @ ca / (a.shape[0] - 1)
    cov_b = cb.T @ cb / (b.shape[0] - 1)
    return ((mu_a - mu_b) ** 2).mean() + ((cov_a - cov_b) ** 2).mean()


def pairwise_penalty(features, distance):
    """mean over env pairs i < j of distance(features[i], features[j]); features f32[K, b, D]."""
    k = features.shape[0]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if not pairs:
        return jnp.zeros((), features.dtype)
    return sum(distance(features[i], features[j]) for i, j in pairs) / len(pairs)


@register
class CORAL(Algorithm):
    name = "coral"

    @staticmethod
    def distance(a, b):
        return coral_distance(a, b)

    @classmethod
    def own_hparams(cls, small):
        return {"mmd_gamma": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1))}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, z).reshape(k, b, -1)
        nll = cross_entropy(logits, ys)
        penalty = pairwise_penalty(z.reshape(k, b, -1), self.distance)
        loss = nll + hp["mmd_gamma"] * penalty
        return loss, {"loss": loss, "nll": nll, "penalty": penalty}
