"""IRM with the Gramian invariance penalty (Khezeli, Blaas, Soboczenski, Chia & Kalantari, "On
Invariance Penalties for Risk Minimization", arXiv 2106.09777, 2021). No code was found
(paperswithcode lists none; the code and issue corpora have none), so this is the paper's
construction with the choices below stated.

The paper's point: for a linear head w on a representation Phi and the squared loss, IRMv1's
penalty is ||grad_w R_e||^2 = 4 ||G_e (w - w_e*)||^2 with G_e = E_e[Phi Phi^T] the Gramian of
the representation in environment e and w_e* that environment's optimal head; a representation
whose Gramian has small eigenvalues makes IRMv1's penalty small although w is far from w_e*
(the counterexamples). Multiplying the gradient by the inverse Gramian removes that
conditioning: ||G_e^{-1} grad_w R_e||^2 = 4 ||w - w_e*||^2, the distance to the
environment's optimal head (IRM's D_dist). Here, per environment e with its b examples,
phi_i = [z_i, 1] (the feature and the head's bias input) and the softmax head W f32[D+1, C]:

    G_e = (1/b) sum_i phi_i phi_i^T + eps_e I,   eps_e = gram_eps * tr(G_e) / (D + 1)
    g_e = grad_W CE_e = (1/b) sum_i phi_i (softmax(W^T phi_i) - onehot(y_i))^T      (D+1, C)
    P_e = || G_e^{-1} g_e ||_F^2
    L = mean_e R_e + lambda_t * mean_e P_e,  lambda_t = gram_lambda if step >= anneal else 1.0

(the cross-entropy in place of the squared loss, as the paper's DomainBed runs; the
ridge term - relative to the mean eigenvalue, so scale-free - is our choice, since a batch
Gramian of D + 1 > b dimensions is singular; the gradient flows through G_e and g_e). The
anneal and the Adam reset at the anneal step are IRM's (DomainBed). Note: issue 27
calls it a Gram matrix "of per-environment gradients"; the paper's Gramian is that of the
representation, used above.
Defaults: gram_lambda 1e2 (10^U(-1,5)), gram_penalty_anneal_iters 500 (int 10^U(0,4)),
gram_eps 1e-2 (10^U(-4,-1)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import AnnealedPenalty, env_losses


def gram_penalty(z, logits, y, eps):
    """P_e for one environment: z f32[b, D], logits f32[b, C], y int32[b]."""
    b = z.shape[0]
    phi = jnp.concatenate([z, jnp.ones((b, 1), z.dtype)], axis=1)
    gram = phi.T @ phi / b
    gram = gram + eps * jnp.trace(gram) / gram.shape[0] * jnp.eye(gram.shape[0], dtype=z.dtype)
    delta = jax.nn.softmax(logits, -1) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    grad = phi.T @ delta / b
    return jnp.sum(jnp.linalg.solve(gram, grad) ** 2)


@register
class IRMGram(AnnealedPenalty):
    name = "irm_gram"
    lambda_key = "gram_lambda"
    anneal_key = "gram_penalty_anneal_iters"
    before = 1.0

    @classmethod
    def own_hparams(cls, small):
        return {
            "gram_lambda": H.HParam(1e2, lambda r: 10 ** r.uniform(-1, 5)),
            "gram_penalty_anneal_iters": H.HParam(500, lambda r: int(10 ** r.uniform(0, 4))),
            "gram_eps": H.HParam(1e-2, lambda r: 10 ** r.uniform(-4, -1)),
        }

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, z)
        z, logits = z.reshape(k, b, -1), logits.reshape(k, b, -1)
        nll = env_losses(logits, ys).mean()
        penalty = jax.vmap(gram_penalty, in_axes=(0, 0, 0, None))(z, logits, ys, hp["gram_eps"]).mean()
        loss = nll + self.penalty_weight(hp, state["step"]) * penalty
        return loss, {"loss": loss, "nll": nll, "penalty": penalty}
