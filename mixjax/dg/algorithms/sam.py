"""SAM on the ERM objective (Foret et al., arXiv 2010.01412).

    g = grad L(w),  eps = rho * g / (||g|| + 1e-12),  update Adam with grad L(w + eps) at w.

||g|| is the global L2 norm over all parameters (davda54/sam with the 1e-12
guard). DomainBed has no SAM; defaults follow the khanrc/swad DomainBed fork:
rho 0.05, random choice {0.01, 0.02, 0.05, 0.1}. Cost: 2 forward/backward.
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates


def sam_perturbation(grads, rho):
    norm = optax.tree.norm(grads)
    return jax.tree.map(lambda g: rho * g / (norm + 1e-12), grads)


@register
class SAM(Algorithm):
    name = "sam"

    @classmethod
    def own_hparams(cls, small):
        return {"rho": H.HParam(0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])))}

    def update(self, hp, state, xs, ys, key):
        params = state["params"]
        grads, aux = jax.grad(self.loss, has_aux=True)(params, hp, state, xs, ys, key)
        eps = sam_perturbation(grads, hp["rho"])
        perturbed = jax.tree.map(jnp.add, params, eps)
        sharp_grads, sharp_aux = jax.grad(self.loss, has_aux=True)(perturbed, hp, state, xs, ys, key)
        params, opt = apply_updates(self.tx(hp), sharp_grads, state["opt"], params)
        metrics = {**aux, "sharp_loss": sharp_aux["loss"]}
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, metrics
