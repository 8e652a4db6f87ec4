"""ANDMask (Parascandolo et al., arXiv 2009.00329), DomainBed's form.

Per-env gradients g_e = grad R_e. For every parameter tensor,

    m = 1[ |mean_e sign(g_e)| >= tau ],
    grad = m * mean_e g_e / (1e-10 + mean(m))     (mean(m) over that tensor's entries),

then Adam(lr, weight_decay). Default tau 1 (U(0.5, 1)). Cost: K backward passes (vmapped).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def and_mask(env_grads, tau):
    """env_grads: pytree with leading axis K -> masked mean gradient pytree."""

    def one(g):
        mask = (jnp.abs(jnp.mean(jnp.sign(g), axis=0)) >= tau).astype(g.dtype)
        return mask * jnp.mean(g, axis=0) / (1e-10 + mask.mean())

    return jax.tree.map(one, env_grads)


@register
class ANDMask(Algorithm):
    name = "andmask"

    @classmethod
    def own_hparams(cls, small):
        return {"tau": H.HParam(1.0, lambda r: r.uniform(0.5, 1.0))}

    def update(self, hp, state, xs, ys, key):
        params = state["params"]
        env_loss = lambda p, x, y: cross_entropy(self.logits(p, x), y)  # noqa: E731
        losses, env_grads = jax.vmap(jax.value_and_grad(env_loss), in_axes=(None, 0, 0))(params, xs, ys)
        grads = and_mask(env_grads, hp["tau"])
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], params)
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": losses.mean()}
