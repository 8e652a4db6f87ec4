"""RDM, risk distribution matching (Nguyen et al., WACV 2024, arXiv 2310.18598), DomainBed's
form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``RDM``, commit b93c22a).

With per-sample losses l f32[K, b] (one forward on the concatenated batch), env risks
R_e = mean_j l[e, j] and the worst env w = argmax_e R_e (no gradient through the choice):

    MMD = mean K(a, a) + mean K(c, c) - 2 mean K(a, c),  a = l[w] (b scalars), c = l (K b scalars),
          K(u, v) = sum_{g in {1e-4, 1e-3, ..., 1e3}} exp(-g (u - v)^2)   (squared distance >= 1e-30)
    V = Var_unbiased(l) + Var_unbiased(l[w])
    L = mean_e R_e + lambda_t * MMD + v_t * V,  (lambda_t, v_t) = (rdm_lambda, variance_weight) if
        step >= rdm_penalty_anneal_iters else (0, 0).

Adam is re-created at step == rdm_penalty_anneal_iters with lr = rdm_lr (used from then on).
Hyperparameters (DomainBed's branch for datasets other than PACS, TerraIncognita, OfficeHome and
DomainNet, whose own ranges are not followed here): rdm_lambda 5.0 (U(0.1,10)),
rdm_penalty_anneal_iters 1500 (int U(800,2700)), variance_weight 0.004 (U(0.001,0.007)),
rdm_lr 1.5e-5 (U(8e-6,2e-5)).
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, reset_where

GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def _kernel(u, v):
    d = jnp.maximum((u[:, None] - v[None, :]) ** 2, 1e-30)
    return sum(jnp.exp(-g * d) for g in GAMMAS)


def rdm_penalties(nll):
    """(MMD, variance penalty) from per-sample losses nll f32[K, b]."""
    worst = nll[jnp.argmax(jax.lax.stop_gradient(nll.mean(1)))]
    flat = nll.reshape(-1)
    mmd = _kernel(worst, worst).mean() + _kernel(flat, flat).mean() - 2 * _kernel(worst, flat).mean()
    return mmd, jnp.var(flat, ddof=1) + jnp.var(worst, ddof=1)


@register
class RDM(Algorithm):
    name = "rdm"

    @classmethod
    def own_hparams(cls, small):
        return {
            "rdm_lambda": H.HParam(5.0, lambda r: r.uniform(0.1, 10.0)),
            "rdm_penalty_anneal_iters": H.HParam(1500, lambda r: int(r.uniform(800, 2700))),
            "variance_weight": H.HParam(0.004, lambda r: r.uniform(0.001, 0.007)),
            "rdm_lr": H.HParam(1.5e-5, lambda r: r.uniform(8e-6, 2e-5)),
        }

    def loss(self, params, hp, state, xs, ys, key):
        nll = optax.softmax_cross_entropy_with_integer_labels(self.env_logits(params, xs), ys)
        erm = nll.mean(1).mean()
        mmd, var = rdm_penalties(nll)
        on = state["step"] >= hp["rdm_penalty_anneal_iters"]
        loss = erm + jnp.where(on, hp["rdm_lambda"], 0.0) * mmd + jnp.where(on, hp["variance_weight"], 0.0) * var
        return loss, {"loss": loss, "erm_loss": erm, "matching_penalty": mmd, "variance_penalty": var}

    def update(self, hp, state, xs, ys, key):
        step = state["step"]
        anneal = hp["rdm_penalty_anneal_iters"]
        tx = adam(jnp.where(step >= anneal, hp["rdm_lr"], hp["lr"]), hp["weight_decay"])
        opt = reset_where(step == anneal, tx.init(state["params"]), state["opt"])
        grads, aux = jax.grad(self.loss, has_aux=True)(state["params"], hp, state, xs, ys, key)
        params, opt = apply_updates(tx, grads, opt, state["params"])
        return {**state, "params": params, "opt": opt, "step": step + 1}, aux
