"""MMD (Li et al., CVPR 2018, MMD-AAE), DomainBed's form: CORAL with a kernel distance.

    d(a, b) = mean K(a, a) + mean K(b, b) - 2 mean K(a, b),
    K(u, v) = sum_{g in {1e-3, 1e-2, ..., 1e3}} exp(-g ||u - v||^2),

squared distances clamped at 1e-30 as DomainBed's ``my_cdist``.
Default mmd_gamma 1.0 (10^U(-1,1)).
"""

import jax.numpy as jnp

from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.coral import CORAL

GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def gaussian_kernel(x, y):
    d = (x**2).sum(-1)[:, None] + (y**2).sum(-1)[None, :] - 2.0 * x @ y.T
    d = jnp.maximum(d, 1e-30)
    return sum(jnp.exp(-g * d) for g in GAMMAS)


def mmd_distance(a, b):
    return gaussian_kernel(a, a).mean() + gaussian_kernel(b, b).mean() - 2.0 * gaussian_kernel(a, b).mean()


@register
class MMD(CORAL):
    name = "mmd"

    @staticmethod
    def distance(a, b):
        return mmd_distance(a, b)
