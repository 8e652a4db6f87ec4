"""DANN (Ganin et al., JMLR 2016) and CDANN (Li et al., ECCV 2018), DomainBed's form.

A discriminator D (MLP: features -> K env logits) sees z = phi(x) (DANN) or
z + Emb(y) (CDANN). With d = env labels,

    L_d = CE(D(z), d)      (CDANN: sum_i w_i CE_i with w_i = 1 / (n_{y_i} * C), class-balanced)
          + grad_penalty * mean_i || d/dz_i sum_j CE(D(z_j), d_j) ||^2,
    L_g = CE(w(z), y) - lambda * L_d.

Alternating steps (DomainBed counts from 1): step t+1 is a discriminator step
if (t+1) mod (1 + d_steps_per_g_step) < d_steps_per_g_step - Adam on (D, Emb)
with (lr_d, weight_decay_d, betas (beta1, 0.9)) - else a generator step, Adam on
(phi, w) with (lr_g, weight_decay_g, betas (beta1, 0.9)).
Defaults (small datasets): lambda 1.0 (10^U(-2,2)), weight_decay_d 0 (10^U(-6,-2)),
d_steps_per_g_step 1 (int 2^U(0,3)), grad_penalty 0 (10^U(-2,1)),
beta1 0.5 ({0, 0.5}), mlp_width 256 (int 2^U(6,10)), mlp_depth 3 ({3,4,5}),
lr_g = lr_d 1e-3 (10^U(-4.5,-2.5)), weight_decay_g 0.
Deviation: DomainBed's mlp_dropout (default 0) is not implemented.
Both branches are computed every step and selected with ``where`` (under
vmap a ``cond`` would do the same).
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy
from mixjax.dg.networks import embedding, mlp


def discriminator_loss(disc_fn, disc_input, env_labels, class_weights, grad_penalty):
    """Weighted env CE + grad_penalty * mean squared input-gradient norm (of the summed CE)."""

    def ce_sum(inp):
        return optax.softmax_cross_entropy_with_integer_labels(disc_fn(inp), env_labels).sum()

    per_sample = optax.softmax_cross_entropy_with_integer_labels(disc_fn(disc_input), env_labels)
    loss = per_sample.mean() if class_weights is None else (class_weights * per_sample).sum()
    input_grad = jax.grad(ce_sum)(disc_input)
    return loss + grad_penalty * (input_grad**2).sum(-1).mean()


def class_balance_weights(y, num_classes):
    """DomainBed CDANN: w_i = 1 / (count(y_i) * C)."""
    counts = jnp.bincount(y, length=num_classes)
    return 1.0 / (counts[y] * num_classes).astype(jnp.float32)


@register
class DANN(Algorithm):
    name = "dann"
    conditional = False

    @classmethod
    def hparam_space(cls, small):
        space = {**H.common_space(small), **cls.own_hparams(small)}
        del space["lr"]  # DomainBed's DANN uses lr_g / lr_d only
        return space

    @classmethod
    def own_hparams(cls, small):
        lr = (lambda r: 10 ** r.uniform(-4.5, -2.5)) if small else (lambda r: 10 ** r.uniform(-5, -3.5))
        wd_g = (lambda r: 0.0) if small else (lambda r: 10 ** r.uniform(-6, -2))
        return {
            "lambda": H.HParam(1.0, lambda r: 10 ** r.uniform(-2, 2)),
            "weight_decay_d": H.HParam(0.0, lambda r: 10 ** r.uniform(-6, -2)),
            "d_steps_per_g_step": H.HParam(1, lambda r: int(2 ** r.uniform(0, 3))),
            "grad_penalty": H.HParam(0.0, lambda r: 10 ** r.uniform(-2, 1)),
            "beta1": H.HParam(0.5, lambda r: float(r.choice([0.0, 0.5]))),
            "mlp_width": H.HParam(256, lambda r: int(2 ** r.uniform(6, 10))),
            "mlp_depth": H.HParam(3, lambda r: int(r.choice([3, 4, 5]))),
            "lr_g": H.HParam(1e-3 if small else 5e-5, lr),
            "lr_d": H.HParam(1e-3 if small else 5e-5, lr),
            "weight_decay_g": H.HParam(0.0, wd_g),
        }

    # -- modules
    @property
    def n_features(self) -> int:
        return self.model.abstract.featurizer.n_outputs

    @property
    def disc_module(self):
        return mlp(self.n_features, self.num_envs, self.static_hp("mlp_width"), self.static_hp("mlp_depth"))

    @property
    def emb_module(self):
        return embedding(self.net.num_classes, self.n_features)

    def gen_tx(self, hp):
        return adam(hp["lr_g"], hp["weight_decay_g"], b1=hp["beta1"], b2=0.9)

    def disc_tx(self, hp):
        return adam(hp["lr_d"], hp["weight_decay_d"], b1=hp["beta1"], b2=0.9)

    def init(self, key, hp):
        kn, kd, ke = jax.random.split(key, 3)
        params = self.model.init(kn)
        disc = {"d": self.disc_module.init(kd), "emb": self.emb_module.init(ke)}
        return {
            "params": params,
            "disc": disc,
            "opt": self.gen_tx(hp).init(params),
            "disc_opt": self.disc_tx(hp).init(disc),
            "step": jnp.zeros((), jnp.int32),
        }

    def _losses(self, params, disc, hp, xs, ys):
        k, b = xs.shape[:2]
        y = ys.reshape(-1)
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        disc_input = z + self.emb_module.merge(disc["emb"])(y) if self.conditional else z
        env_labels = jnp.repeat(jnp.arange(k), b)
        weights = class_balance_weights(y, self.net.num_classes) if self.conditional else None
        d_loss = discriminator_loss(self.disc_module.merge(disc["d"]), disc_input, env_labels, weights, hp["grad_penalty"])
        nll = cross_entropy(self.classify(params, z), y)
        return d_loss, nll

    def update(self, hp, state, xs, ys, key):
        params, disc = state["params"], state["disc"]
        d_loss, d_grads = jax.value_and_grad(lambda d: self._losses(params, d, hp, xs, ys)[0])(disc)

        def gen_objective(p):
            dl, nll = self._losses(p, disc, hp, xs, ys)
            return nll - hp["lambda"] * dl, nll

        (g_loss, nll), g_grads = jax.value_and_grad(gen_objective, has_aux=True)(params)
        new_disc, new_disc_opt = apply_updates(self.disc_tx(hp), d_grads, state["disc_opt"], disc)
        new_params, new_opt = apply_updates(self.gen_tx(hp), g_grads, state["opt"], params)
        count = state["step"] + 1  # DomainBed increments update_count before choosing
        d_steps = hp["d_steps_per_g_step"]
        is_d = jnp.mod(count, 1 + d_steps) < d_steps
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(is_d, u, v), a, b)  # noqa: E731
        new_state = {
            "params": pick(params, new_params),
            "opt": pick(state["opt"], new_opt),
            "disc": pick(new_disc, disc),
            "disc_opt": pick(new_disc_opt, state["disc_opt"]),
            "step": count,
        }
        metrics = {"loss": jnp.where(is_d, d_loss, g_loss), "disc_loss": d_loss, "nll": nll}
        return new_state, metrics


@register
class CDANN(DANN):
    name = "cdann"
    conditional = True
