"""Fishr (Rame et al., ICML 2022, arXiv 2109.02934), DomainBed's form.

Per-sample gradients of the per-sample CE w.r.t. the linear classifier
(W: [D, C], b: [C]); for a linear head they are analytic:

    dW_i = z_i (p_i - onehot(y_i))^T,  db_i = p_i - onehot(y_i).

Per env e: v_e = mean_i (g_i - mean_i g_i)^2 (elementwise variance over the
env's b samples, flattened), smoothed by an EMA per env,

    m_e <- ema * m_e + (1 - ema) * v_e   (m_e starts at 0; stored detached),
    v~_e = m_e / (1 - ema)               (DomainBed's "oneminusema" correction),

penalty = (1/E) sum_e mean((v~_e - mean_e v~_e)^2), and
L = CE + lambda_t * penalty with lambda_t = lambda if step >= anneal else 0;
Adam re-initialised at the anneal step. Defaults: lambda 1000 (10^U(1,4)),
penalty_anneal_iters 1500 (int U(0,5000)), ema 0.95 (U(0.9,0.99)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import AnnealedPenalty, cross_entropy


def per_sample_head_grads(z, logits, y):
    """f32[n, (D + 1) * C]: per-sample CE grads of a linear head (kernel then bias)."""
    delta = jax.nn.softmax(logits, -1) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    dw = z[:, :, None] * delta[:, None, :]
    return jnp.concatenate([dw.reshape(z.shape[0], -1), delta], axis=1)


def grad_variance(g):
    """Elementwise variance over samples (biased): g f32[n, P] -> f32[P]."""
    return ((g - g.mean(0, keepdims=True)) ** 2).mean(0)


def fishr_penalty(variances):
    """variances f32[E, P] -> (1/E) sum_e mean_P (v_e - mean_e v)^2."""
    return ((variances - variances.mean(0, keepdims=True)) ** 2).mean(1).mean()


@register
class Fishr(AnnealedPenalty):
    name = "fishr"
    lambda_key = "lambda"
    anneal_key = "penalty_anneal_iters"
    before = 0.0
    carry = ("ema_var",)

    @classmethod
    def own_hparams(cls, small):
        return {
            "lambda": H.HParam(1000.0, lambda r: 10 ** r.uniform(1, 4)),
            "penalty_anneal_iters": H.HParam(1500, lambda r: int(r.uniform(0.0, 5000.0))),
            "ema": H.HParam(0.95, lambda r: r.uniform(0.90, 0.99)),
        }

    def init(self, key, hp):
        state = super().init(key, hp)
        n_cls = sum(x.size for x in jax.tree.leaves(state["params"]["classifier"]))
        return {**state, "ema_var": jnp.zeros((self.num_envs, n_cls), jnp.float32)}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, z)
        nll = cross_entropy(logits, ys.reshape(-1))
        g = per_sample_head_grads(z, logits, ys.reshape(-1)).reshape(k, b, -1)
        var = jax.vmap(grad_variance)(g)
        ema = hp["ema"]
        new_ema = ema * state["ema_var"] + (1 - ema) * var
        penalty = fishr_penalty(new_ema / (1 - ema))
        loss = nll + self.penalty_weight(hp, state["step"]) * penalty
        return loss, {"loss": loss, "nll": nll, "penalty": penalty, "ema_var": jax.lax.stop_gradient(new_ema)}
