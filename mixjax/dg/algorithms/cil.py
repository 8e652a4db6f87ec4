"""CIL: Continuous Invariance Learning (Lin, Zhou, Tan, Ma, Liu, He, Yuan, Liu, Zhang, Yang,
Wang, ICLR 2024, arXiv 2310.05348, section 3 "Formulation").

No public code was found (searched the code index: the first author's repositories hold ZIN
and BIRM, not CIL); this is the paper's min-max as written, with the choices below.

Invariance for a continuous environment index t: y is independent of t given Phi(x), i.e.
E[t | Phi(x), y] = E[t | Phi(x)]. Two regressors of t measure it: h(Phi(x)) from the features
only and g(Phi(x), y) from the features and the label. If the label tells nothing more about
t, the best g does no better than the best h; the gap of their errors is the penalty:

    min_{Phi, w}  CE(w(Phi(x)), y) + lambda * ( min_h R_h(h; Phi) - min_g R_g(g; Phi) )
      = min_{Phi, w, h} max_g  CE + lambda * ( R_h(h; Phi) - R_g(g; Phi) )

Here, with a = [Phi(x), 1] (features and a constant) over the K x b rows of a step:

    t       = (m_e - mean_e' m_e') / s  for every example of training env e, m_e the first
              field (sorted by name) of its metadata row ``hp["train_env_meta"]`` (the paper's
              t is one number: rotated_mnist's angle, colored_mnist's colour_agreement - every
              mixjax dataset with metadata has one field), centred and divided by its range s
              over the job's training envs (1 where 0; ``d3g.metadata_scale``)
    h(a)    = a v                       R_h = mean_i (a_i v - t_i)^2 + rho |v|^2
    g(a, y) = a w_y  (one per class)    R_g = sum_y (n_y / N) [ mean_{i: y_i = y} (a_i w_y - t_i)^2 + rho |w_y|^2 ]

Both inner problems are ridge regressions, solved exactly on the step's batch (v, w_y by the
normal equations, ``rho`` = ``cil_ridge``), so the penalty is the min-max's value itself,
differentiated through the solutions (the envelope theorem: only the features move it).
Setting every w_y = v gives R_g = R_h, so 0 <= penalty <= R_h(0) = var(t): bounded, and 0
exactly when the label adds nothing to the features' linear prediction of t.

Choices not fixed by the paper as read here: linear regressors (the paper's are small
networks) solved in closed form on each batch rather than trained by alternating gradient
steps (a first version with simultaneous descent-ascent on linear g/h diverged on
RotatedMNIST: the features grew g's lagging error without bound, loss -2e4 by step 100);
the label entering g as a per-class regressor with the class-frequency-weighted ridge above
(what makes penalty >= 0 hold exactly); no penalty annealing; the centring/range scaling of t.
``lambda`` = ``cil_lambda``. Prediction is the network's classifier (no test-time step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy
from mixjax.dg.algorithms.d3g import metadata_scale


def env_targets(train_meta):
    """f32[K]: the training envs' first metadata field, centred and divided by its range."""
    t = train_meta[:, :1]
    return ((t - t.mean(0)) / metadata_scale(t))[:, 0]


def ridge(a, t, weight, rho):
    """``(w, R)``: w = argmin_w R(w), R(w) = sum_i weight_i (a_i w - t_i)^2 / sum weight
    + rho |w|^2 (0 rows weigh nothing; w = 0 when every weight is 0), a f32[N, P], t f32[N]."""
    n = jnp.maximum(weight.sum(), 1.0)
    aw = a * weight[:, None]
    w = jnp.linalg.solve(aw.T @ a / n + rho * jnp.eye(a.shape[1]), aw.T @ t / n)
    return w, (weight * (a @ w - t) ** 2).sum() / n + rho * (w @ w)


def cil_penalty(z, y, t, num_classes, rho):
    """``(R_h*, R_g*)``: the optimal ridge errors of t from the features z f32[N, D] alone and
    per class of y int32[N]; the penalty is their difference (>= 0)."""
    a = jnp.concatenate([z, jnp.ones((z.shape[0], 1), z.dtype)], 1)
    masks = (y[None, :] == jnp.arange(num_classes)[:, None]).astype(z.dtype)   # [C, N]
    # h's and the C regressors g_y in ONE batched solve: with jaxlib 0.10 two independent
    # batched LU factorisations in one XLA:CPU program can each take an intra-op pool thread
    # and wait for sub-tasks queued on the same, exhausted pool (a deadlock seen under the
    # sweep's job vmap on 2 cores; the parallel LAPACK path is gone from jaxlib >= 0.11.1).
    _, r = jax.vmap(lambda w: ridge(a, t, w, rho))(jnp.concatenate([jnp.ones_like(t)[None], masks]))
    return r[0], (masks.sum(1) / z.shape[0] * r[1:]).sum()


@register
class CIL(Algorithm):
    name = "cil"
    needs_train_env_metadata = True

    @classmethod
    def own_hparams(cls, small):
        return {"cil_lambda": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
                "cil_ridge": H.HParam(0.1, lambda r: 10 ** r.uniform(-2, 0))}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        y = ys.reshape(k * b)
        t = jnp.repeat(env_targets(hp["train_env_meta"]), b)             # rows follow xs
        ce = cross_entropy(self.classify(params, z), y)
        r_h, r_g = cil_penalty(z, y, t, self.net.num_classes, hp["cil_ridge"])
        loss = ce + hp["cil_lambda"] * (r_h - r_g)
        return loss, {"loss": loss, "ce_loss": ce, "reg_h_loss": r_h, "reg_g_loss": r_g,
                      "penalty": r_h - r_g}
