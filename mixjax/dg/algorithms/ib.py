"""IB-ERM and IB-IRM (Ahuja et al., "Invariance principle meets information bottleneck for
OOD generalization", NeurIPS 2021, arXiv 2106.06607), DomainBed's form
(facebookresearch/DomainBed ``domainbed/algorithms.py`` ``IB_ERM``/``IB_IRM``, commit b93c22a).

Per training env e with features z_e = phi(x_e) f32[b, D]:

    IB_e = mean_d Var_unbiased(z_e[:, d])        (torch ``features.var(dim=0).mean()``)
    IB-ERM: L = mean_e R_e + mu_t * mean_e IB_e,
    IB-IRM: L = mean_e R_e + lambda_t * mean_e P_e + mu_t * mean_e IB_e,

P_e the IRMv1 penalty (``irm.irm_penalty``); mu_t = ib_lambda if step >= ib_penalty_anneal_iters
else 0; lambda_t = irm_lambda if step >= irm_penalty_anneal_iters else 1. Adam is
re-initialised at step == ib_penalty_anneal_iters (and, for IB-IRM, also at step ==
irm_penalty_anneal_iters).
Hyperparameters (``hparams_registry.py``): ib_lambda 1e2 (10^U(-1,5)), ib_penalty_anneal_iters
500 (int 10^U(0,4)); IB-IRM adds irm_lambda 1e2 (10^U(-1,5)), irm_penalty_anneal_iters 500
(int 10^U(0,4)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, env_losses, reset_where
from mixjax.dg.algorithms.irm import irm_penalty


def ib_penalty(features: jax.Array) -> jax.Array:
    """mean over envs of the mean unbiased per-dimension variance; features f32[K, b, D]."""
    return jnp.var(features, axis=1, ddof=1).mean(-1).mean()


def _anneal() -> H.HParam:
    return H.HParam(500, lambda r: int(10 ** r.uniform(0, 4)))


@register
class IBERM(Algorithm):
    name = "ib_erm"
    irm = False

    @classmethod
    def own_hparams(cls, small):
        space = {"ib_lambda": H.HParam(1e2, lambda r: 10 ** r.uniform(-1, 5)),
                 "ib_penalty_anneal_iters": _anneal()}
        if cls.irm:
            space.update({"irm_lambda": H.HParam(1e2, lambda r: 10 ** r.uniform(-1, 5)),
                          "irm_penalty_anneal_iters": _anneal()})
        return space

    def weights(self, hp, step):
        """(irm weight, ib weight) at ``step`` (DomainBed's ``update_count``)."""
        ib = jnp.where(step >= hp["ib_penalty_anneal_iters"], hp["ib_lambda"], 0.0)
        if not self.irm:
            return jnp.zeros(()), ib
        return jnp.where(step >= hp["irm_penalty_anneal_iters"], hp["irm_lambda"], 1.0), ib

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, z).reshape(k, b, -1)
        nll = env_losses(logits, ys).mean()
        ib = ib_penalty(z.reshape(k, b, -1))
        w_irm, w_ib = self.weights(hp, state["step"])
        loss = nll + w_ib * ib
        metrics = {"nll": nll, "IB_penalty": ib}
        if self.irm:
            irm = jax.vmap(irm_penalty)(logits, ys).mean()
            loss = loss + w_irm * irm
            metrics["IRM_penalty"] = irm
        return loss, {"loss": loss, **metrics}

    def update(self, hp, state, xs, ys, key):
        step = state["step"]
        reset = step == hp["ib_penalty_anneal_iters"]
        if self.irm:
            reset = reset | (step == hp["irm_penalty_anneal_iters"])
        state = {**state, "opt": reset_where(reset, self.tx(hp).init(state["params"]), state["opt"])}
        return super().update(hp, state, xs, ys, key)


@register
class IBIRM(IBERM):
    name = "ib_irm"
    irm = True
