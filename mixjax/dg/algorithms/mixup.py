"""Inter-domain Mixup (Yan et al., arXiv 2001.00677; Wang et al. 2020), DomainBed's form.

Random cyclic env pairs (perm[i], perm[i+1 mod K]); per pair lambda ~ Beta(alpha, alpha),

    x = lambda x_i + (1 - lambda) x_j,
    L = (1/K) sum_pairs [lambda CE(f(x), y_i) + (1 - lambda) CE(f(x), y_j)].

Default mixup_alpha 0.2 (10^U(-1,1)).
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm


def mixup_loss(logits_fn, xs, ys, perm, lam):
    """xs f32[K, b, ...], ys int32[K, b], perm int32[K], lam f32[K] -> scalar."""
    i, j = perm, jnp.roll(perm, -1)
    shape = (-1,) + (1,) * (xs.ndim - 1)
    x = lam.reshape(shape) * xs[i] + (1 - lam.reshape(shape)) * xs[j]
    k, b = xs.shape[:2]
    logits = logits_fn(x.reshape(k * b, *xs.shape[2:])).reshape(k, b, -1)
    ce_i = optax.softmax_cross_entropy_with_integer_labels(logits, ys[i]).mean(-1)
    ce_j = optax.softmax_cross_entropy_with_integer_labels(logits, ys[j]).mean(-1)
    return (lam * ce_i + (1 - lam) * ce_j).sum() / k


@register
class Mixup(Algorithm):
    name = "mixup"

    @classmethod
    def own_hparams(cls, small):
        return {"mixup_alpha": H.HParam(0.2, lambda r: 10 ** r.uniform(-1, 1))}

    def loss(self, params, hp, state, xs, ys, key):
        kp, kl = jax.random.split(key)
        k = xs.shape[0]
        perm = jax.random.permutation(kp, k)
        alpha = hp["mixup_alpha"]
        lam = jax.random.beta(kl, alpha, alpha, (k,))
        loss = mixup_loss(lambda x: self.logits(params, x), xs, ys, perm, lam)
        return loss, {"loss": loss}
