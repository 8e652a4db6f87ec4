"""CIL: Continuous Invariance Learning (Lin, Zhou, Tan, Ma, Liu, He, Yuan, Liu, Zhang, Yang,
Wang, ICLR 2024, arXiv 2310.05348, section 3 "Formulation").

No public code was found (searched the code index: the first author's repositories hold ZIN
and BIRM, not CIL); this is the paper's min-max as written, with the choices below.

Invariance for a continuous environment index t: y is independent of t given Phi(x), i.e.
E[t | Phi(x), y] = E[t | Phi(x)]. Two regressors of t measure it: h(Phi(x)) from the features
only and g(Phi(x), y) from the features and the label. If the label tells nothing more about
t, the best g does no better than the best h; the gap of their squared errors is the penalty:

    min_{Phi, w, h} max_g   CE(w(Phi(x)), y) + lambda * ( E (h(Phi(x)) - t)^2 - E (g(Phi(x), y) - t)^2 )

(h fits t together with Phi; g fits t, i.e. maximises the negative of its error, and Phi is
pushed to make g's extra information from y useless). Here, with z = Phi(x):

    t     = (m_e - mean_e' m_e') / s  for every example of training env e, m_e the first
            field (sorted by name) of its metadata row ``hp["train_env_meta"]`` (the paper's
            t is one number; rotated_mnist's angle, colored_mnist's colour_agreement - every
            mixjax dataset with metadata has one field), centred and divided by its range s
            over the job's training envs (1 where 0; ``d3g.metadata_scale``)
    h(z)    = z V + c                         (linear, f32[D, 1])
    g(z, y) = z W_y + b_y                     (one linear regressor per class, f32[C, D, 1])
    L_h, L_g = mean over the K x b examples of (. - t)^2
    step:   (Phi, w, h) descend  CE + lambda (L_h - L_g);   g descends L_g (its own error,
            z held fixed); simultaneous, one Adam (lr, weight_decay) over all of them.

Choices not fixed by the paper as read here: linear regressors (the paper's regressors are
small networks), the label entering g as a per-class regressor, simultaneous
descent-ascent (one step for both players), no penalty annealing, the centring/range
scaling of t. ``lambda`` = ``cil_lambda``. Prediction is the network's classifier (no
test-time procedure).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy
from mixjax.dg.algorithms.d3g import metadata_scale


def env_targets(train_meta):
    """f32[K, 1]: the training envs' first metadata field, centred and divided by its range."""
    t = train_meta[:, :1]
    return (t - t.mean(0)) / metadata_scale(t)


def init_regressors(key, dim, num_classes, num_fields):
    """h: {"kernel": f32[D, M], "bias": f32[M]}; g: {"kernel": f32[C, D, M], "bias": f32[C, M]}."""
    k_h, k_g = jax.random.split(key)
    init = nnx.initializers.lecun_normal()
    g_kernel = jax.vmap(lambda k: init(k, (dim, num_fields)))(jax.random.split(k_g, num_classes))
    return {"h": {"kernel": init(k_h, (dim, num_fields)), "bias": jnp.zeros((num_fields,))},
            "g": {"kernel": g_kernel, "bias": jnp.zeros((num_classes, num_fields))}}


def regression_losses(z, ys, t, h, g):
    """(L_h, L_g): mean squared errors (summed over the M outputs) of the feature-only regressor h and
    the label-conditioned g; z f32[N, D], ys int32[N], t f32[N, M]."""
    pred_h = z @ h["kernel"] + h["bias"]
    pred_g = jnp.einsum("nd,ndm->nm", z, g["kernel"][ys]) + g["bias"][ys]
    return ((pred_h - t) ** 2).sum(-1).mean(), ((pred_g - t) ** 2).sum(-1).mean()


@register
class CIL(Algorithm):
    name = "cil"
    needs_train_env_metadata = True

    @classmethod
    def own_hparams(cls, small):
        return {"cil_lambda": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1))}

    def init(self, key, hp):
        k_net, k_reg = jax.random.split(key)
        params = self.model.init(k_net)
        d = self.model.abstract.featurizer.n_outputs
        reg = init_regressors(k_reg, d, self.net.num_classes, 1)
        return {"params": params, "reg": reg, "opt": self.tx(hp).init((params, reg)),
                "step": jnp.zeros((), jnp.int32)}

    def _parts(self, params, xs, ys, hp):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        t = jnp.repeat(env_targets(hp["train_env_meta"]), b, axis=0)    # rows follow xs
        return z, ys.reshape(k * b), t

    def objective(self, params, h, g, hp, xs, ys):
        """The (Phi, w, h) player's loss CE + lambda (L_h - L_g), and its metrics."""
        z, y, t = self._parts(params, xs, ys, hp)
        ce = cross_entropy(self.classify(params, z), y)
        l_h, l_g = regression_losses(z, y, t, h, g)
        loss = ce + hp["cil_lambda"] * (l_h - l_g)
        return loss, {"loss": loss, "ce_loss": ce, "reg_h_loss": l_h, "reg_g_loss": l_g,
                      "penalty": l_h - l_g}

    def g_loss(self, g, h, params, hp, xs, ys):
        """The g player's own error L_g, the features held fixed."""
        z, y, t = self._parts(params, xs, ys, hp)
        return regression_losses(jax.lax.stop_gradient(z), y, t, h, g)[1]

    def update(self, hp, state, xs, ys, key):
        params, reg = state["params"], state["reg"]
        (gp, gh), aux = jax.grad(self.objective, argnums=(0, 1), has_aux=True)(
            params, reg["h"], reg["g"], hp, xs, ys)
        gg = jax.grad(self.g_loss)(reg["g"], reg["h"], params, hp, xs, ys)
        (params, reg), opt = apply_updates(self.tx(hp), (gp, {"h": gh, "g": gg}), state["opt"], (params, reg))
        return {**state, "params": params, "reg": reg, "opt": opt, "step": state["step"] + 1}, aux
