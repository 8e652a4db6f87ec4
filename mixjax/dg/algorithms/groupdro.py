"""GroupDRO over environments (Sagawa et al., arXiv 1911.08731), DomainBed's form.

State q in the simplex over the E training envs (DomainBed starts from ones(E);
after the first normalisation this equals uniform). Every step

    q_e <- q_e * exp(eta * R_e)   (R_e detached),   q <- q / sum q,
    L = sum_e q_e R_e.

Default groupdro_eta 1e-2 (10^U(-3,-1)). The LM-mixing GroupDRO in
``mixjax.mixing`` acts on token-domain sampling weights; this one weights the
loss of per-env minibatches, as DomainBed does.
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, env_losses


def groupdro_weights(q, losses, eta):
    q = q * jnp.exp(eta * jax.lax.stop_gradient(losses))
    return q / q.sum()


@register
class GroupDRO(Algorithm):
    name = "groupdro"
    carry = ("q",)

    @classmethod
    def own_hparams(cls, small):
        return {"groupdro_eta": H.HParam(1e-2, lambda r: 10 ** r.uniform(-3, -1))}

    def init(self, key, hp):
        return {**super().init(key, hp), "q": jnp.ones((self.num_envs,), jnp.float32)}

    def loss(self, params, hp, state, xs, ys, key):
        losses = env_losses(self.env_logits(params, xs), ys)
        q = groupdro_weights(state["q"], losses, hp["groupdro_eta"])
        loss = jnp.dot(q, losses)
        return loss, {"loss": loss, "nll": losses.mean(), "q": q}
