"""CAD and CondCAD, contrastive adversarial domain bottlenecks (Ruan et al., "Optimal
representations for covariate shift", ICLR 2022, arXiv 2201.00057), DomainBed's form
(facebookresearch/DomainBed ``domainbed/algorithms.py`` ``AbstractCAD.bn_loss``, commit b93c22a).

On the concatenated batch z f32[N, D] with labels y and env labels d; T = temperature,
l_ij = (z_i . z_j / T) * [i != j] - max_j(...) (row max, no gradient):

    CAD (I(D; Z)):      lp_ij = l_ij - logsumexp_{j != i} l_ij
                        B_i = -(T / 0.07) logsumexp_{j: d_j != d_i} lp_ij,
                        rows i with some other example of label y_i;
    CondCAD (I(D; Z|Y)): lp_ij = l_ij - logsumexp_{j != i, y_j = y_i} l_ij
                        B_i = -(T / 0.07) logsumexp_{j: y_j = y_i, d_j != d_i} lp_ij,
                        rows i with some example of label y_i from another env;

    bn = mean of the finite B_i (0 if none),   L = CE(w(z), y) + lmbda * bn.

This is the default (and only searched) branch: ``is_flipped=True``, ``is_project=False``,
``is_normalized=False`` (DomainBed's random search fixes all three).
Hyperparameters: lmbda 1e-1 (choice {1e-4, ..., 1e2}), temperature 0.1 (choice {0.05, 0.1}).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy

BASE_TEMPERATURE = 0.07
NEG = -1e30  # stands for log(0) inside masked logsumexps (torch uses -inf)


def _masked_lse(x, mask):
    return jax.nn.logsumexp(jnp.where(mask, x, NEG), axis=1)


def bottleneck_loss(z, y, d, temperature, conditional: bool):
    """DomainBed ``AbstractCAD.bn_loss`` (flipped, no projection, no normalisation)."""
    n = z.shape[0]
    drop = ~jnp.eye(n, dtype=bool)
    same_y = (y[:, None] == y[None, :]) & drop
    same_d = d[:, None] == d[None, :]
    logits = (z @ z.T) / temperature * drop
    logits = logits - jax.lax.stop_gradient(logits.max(1, keepdims=True))
    if conditional:
        target = same_y & ~same_d
        valid = target.sum(1) > 0
        log_prob = logits - _masked_lse(logits, same_y)[:, None]
    else:
        target = ~same_d
        valid = same_y.sum(1) > 0
        log_prob = logits - _masked_lse(logits, drop)[:, None]
    has = target.any(1)  # rows whose logsumexp is over an empty set are +inf in torch: not finite
    rows = -(temperature / BASE_TEMPERATURE) * _masked_lse(log_prob, target)
    keep = valid & has & jnp.isfinite(rows)
    count = keep.sum()
    return jnp.where(count > 0, jnp.where(keep, rows, 0.0).sum() / jnp.maximum(count, 1), 0.0)


class AbstractCAD(Algorithm):
    conditional = False

    @classmethod
    def own_hparams(cls, small):
        return {
            "lmbda": H.HParam(1e-1, lambda r: float(r.choice([1e-4, 1e-3, 1e-2, 1e-1, 1, 1e1, 1e2]))),
            "temperature": H.HParam(0.1, lambda r: float(r.choice([0.05, 0.1]))),
        }

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        y = ys.reshape(-1)
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        d = jnp.repeat(jnp.arange(k), b)
        bn = bottleneck_loss(z, y, d, hp["temperature"], self.conditional)
        clf = cross_entropy(self.classify(params, z), y)
        loss = clf + hp["lmbda"] * bn
        return loss, {"loss": loss, "clf_loss": clf, "bn_loss": bn}


@register
class CAD(AbstractCAD):
    name = "cad"
    conditional = False


@register
class CondCAD(AbstractCAD):
    name = "condcad"
    conditional = True
