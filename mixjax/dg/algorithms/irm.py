"""IRMv1 (Arjovsky et al., arXiv 1907.02893), DomainBed's form.

One forward on the concatenated batch; per env e, with a dummy scale s on the logits,

    P_e = d/ds CE(s * f(x_e[0::2]), y_e[0::2]) |_{s=1}  *  d/ds CE(s * f(x_e[1::2]), y_e[1::2]) |_{s=1}

(an unbiased estimate of ||grad_s R_e||^2 from two halves), and

    L = mean_e R_e + lambda_t * mean_e P_e,   lambda_t = irm_lambda if step >= anneal else 1.0.

Adam is re-initialised at step == irm_penalty_anneal_iters (DomainBed). The
original IRM code differs: full-batch squared gradient, loss divided by the
weight when > 1, no Adam reset (reference section 14.2).
Defaults: irm_lambda 1e2 (10^U(-1,5)), irm_penalty_anneal_iters 500 (int 10^U(0,4)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import AnnealedPenalty, cross_entropy, env_losses


def irm_penalty(logits: jax.Array, y: jax.Array) -> jax.Array:
    """DomainBed ``_irm_penalty`` for one env: logits f32[b, C], y int32[b]."""
    grad_s = jax.grad(lambda s, lg, yy: cross_entropy(lg * s, yy))
    one = jnp.ones((), logits.dtype)
    return grad_s(one, logits[0::2], y[0::2]) * grad_s(one, logits[1::2], y[1::2])


@register
class IRM(AnnealedPenalty):
    name = "irm"
    lambda_key = "irm_lambda"
    anneal_key = "irm_penalty_anneal_iters"
    before = 1.0

    @classmethod
    def own_hparams(cls, small):
        return {
            "irm_lambda": H.HParam(1e2, lambda r: 10 ** r.uniform(-1, 5)),
            "irm_penalty_anneal_iters": H.HParam(500, lambda r: int(10 ** r.uniform(0, 4))),
        }

    def loss(self, params, hp, state, xs, ys, key):
        logits = self.env_logits(params, xs)
        nll = env_losses(logits, ys).mean()
        penalty = jax.vmap(irm_penalty)(logits, ys).mean()
        loss = nll + self.penalty_weight(hp, state["step"]) * penalty
        return loss, {"loss": loss, "nll": nll, "penalty": penalty}
