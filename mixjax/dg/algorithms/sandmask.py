"""SAND-mask (Shahtalebi et al., arXiv 2106.02266), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``SANDMask.mask_grads``, commit b93c22a).

Per-env gradients g_e = grad R_e (one forward per env). For every parameter tensor, with
v = Var_unbiased,e(g_e) (NaN -> 1e-17, e.g. one env) and a = |mean_e sign(g_e)|:

    m = max(tanh(k * (a - tau) / v), 0)          (NaN -> 1e-17; entries with v = 0 give +-inf
                                                    inside tanh, as in torch)
    grad = m * mean_e g_e / (1e-10 + mean(m))     (mean(m) over that tensor's entries)

then Adam(lr, weight_decay). Hyperparameters: tau 1.0 (U(0,1)), k 10 (10^U(-3,5)).
With the default tau = 1, a - tau <= 0, so the mask is 0 everywhere (the zero-variance entries
give tanh(0 * inf) = NaN -> 1e-17): DomainBed's default SANDMask run does not train; random
draws (tau < 1) do. Reproduced as is.
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def sand_mask(env_grads, tau, k):
    """env_grads: pytree with leading axis K -> masked mean gradient pytree."""

    def one(g):
        var = jnp.var(g, axis=0, ddof=1)
        var = jnp.where(jnp.isnan(var), 1e-17, var)
        mask = jnp.tanh(k * (1.0 / var) * (jnp.abs(jnp.sign(g).mean(0)) - tau))
        mask = jnp.maximum(mask, 0.0)
        mask = jnp.where(jnp.isnan(mask), 1e-17, mask)
        return mask * g.mean(0) / (1e-10 + mask.mean())

    return jax.tree.map(one, env_grads)


@register
class SANDMask(Algorithm):
    name = "sandmask"

    @classmethod
    def own_hparams(cls, small):
        return {
            "tau": H.HParam(1.0, lambda r: r.uniform(0.0, 1.0)),
            "k": H.HParam(1e1, lambda r: 10 ** r.uniform(-3, 5)),
        }

    def update(self, hp, state, xs, ys, key):
        params = state["params"]
        env_loss = lambda p, x, y: cross_entropy(self.logits(p, x), y)  # noqa: E731
        losses, env_grads = jax.vmap(jax.value_and_grad(env_loss), in_axes=(None, 0, 0))(params, xs, ys)
        grads = sand_mask(env_grads, hp["tau"], hp["k"])
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], params)
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": losses.mean()}
