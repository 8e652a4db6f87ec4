"""Transfer (Zhang et al., "Quantifying and improving transferability in domain generalization",
NeurIPS 2021, arXiv 2106.03632, Algorithm 1), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``Transfer.update``/``loss_gap``, ``lib/misc.py`` ``proj``/``distance``,
commit b93c22a).

Networks: featuriser phi, linear classifier w, and an adversarial copy w_adv of w (same init).
With gap(phi, h) = max_e CE(h(phi(x_e)), y_e) - min_e CE(h(phi(x_e)), y_e), one update is

1. L = CE(w(phi(x)), y) on all envs; Adam step on phi and on w;
2. L_gap = t_lambda * gap(phi, w_adv) (w_adv from the previous update); Adam step on phi only
   (w gets no gradient; torch >= 2's ``zero_grad`` sets it to None and Adam skips it: w's
   moments and step count do not move, hence two Adams here, one per part);
3. w_adv <- w;
4. d_steps_per_g times: w_adv <- w_adv + lr_d * d(t_lambda * gap(phi, w_adv)) / d w_adv (plain
   SGD ascent), then w_adv <- proj_{B(w, delta)}(w_adv): if ||w_adv - w|| > delta (Frobenius over
   weight and bias together), w_adv <- w + delta / ||w_adv - w|| * (w_adv - w).

Reported: ``loss`` (step 1's CE) and ``gap`` (t_lambda * gap of the last ascent iterate, before
its step). ``gda``: DomainBed then builds the main optimiser as ``SGD(adv_classifier, lr)``;
steps 1-2 then move only w_adv (step 1 gives it no gradient; step 2 descends on it) and step 3
overwrites it, so phi and w never change. Its random search always draws ``gda = True``, so
only the default (hparams seed 0, gda False) trains; reproduced as is.
Hyperparameters (``hparams_registry.py``): t_lambda 1.0 (10^U(-2,1)), delta 2.0 (U(0.1,3)),
d_steps_per_g 10 (choice {1, 2, 5}), weight_decay_d 0 (10^U(-6,-2), unused by the update),
gda False (True), beta1 0.5 ({0, 0.5}, unused), lr_d 1e-3 (10^U(-4.5,-2.5)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg import networks
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import (Algorithm, apply_updates, cross_entropy, env_losses,
                                       only_part)
from mixjax.dg.networks import Functional


def loss_gap(env_risks):
    """max_e R_e - min_e R_e (DomainBed ``loss_gap``)."""
    return env_risks.max() - env_risks.min()


def project(adv, center, delta):
    """Euclidean projection of the parameter tree ``adv`` onto the ball B(center, delta)."""
    diff = jax.tree.map(jnp.subtract, adv, center)
    dist = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(diff)))
    ratio = jnp.where(dist <= delta, 1.0, delta / jnp.maximum(dist, 1e-30))
    return jax.tree.map(lambda c, d: c + ratio * d, center, diff)


@register
class Transfer(Algorithm):
    name = "transfer"

    @classmethod
    def own_hparams(cls, small):
        return {
            "t_lambda": H.HParam(1.0, lambda r: 10 ** r.uniform(-2, 1)),
            "delta": H.HParam(2.0, lambda r: r.uniform(0.1, 3.0)),
            "d_steps_per_g": H.HParam(10, lambda r: int(r.choice([1, 2, 5]))),
            "weight_decay_d": H.HParam(0.0, lambda r: 10 ** r.uniform(-6, -2)),
            "gda": H.HParam(False, lambda r: True),
            "beta1": H.HParam(0.5, lambda r: float(r.choice([0.0, 0.5]))),
            "lr_d": H.HParam(1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5)),
        }

    @property
    def head(self) -> Functional:
        return networks.linear(self.model.abstract.featurizer.n_outputs, self.net.num_classes)

    def tx_f(self, hp):
        return only_part("featurizer", self.tx(hp))

    def tx_c(self, hp):
        return only_part("classifier", self.tx(hp))

    def init(self, key, hp):
        params = self.model.init(key)
        adv = jax.tree.map(jnp.copy, params["classifier"])
        return {"params": params, "adv": adv, "opt": self.tx_f(hp).init(params), "opt_c": self.tx_c(hp).init(params),
                "step": jnp.zeros((), jnp.int32)}

    def env_risks(self, params, adv, xs, ys):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        return env_losses(self.head.merge(adv)(z).reshape(k, b, -1), ys)

    def update(self, hp, state, xs, ys, key):
        params = state["params"]
        # 1. ERM step on phi and w
        loss, g = jax.value_and_grad(lambda p: cross_entropy(self.env_logits(p, xs), ys))(params)
        new, opt_f = apply_updates(self.tx_f(hp), g, state["opt"], params)
        new, opt_c = apply_updates(self.tx_c(hp), g, state["opt_c"], new)
        # 2. descend the gap of the previous adversarial head, on phi only
        g_gap = jax.grad(lambda p: hp["t_lambda"] * loss_gap(self.env_risks(p, state["adv"], xs, ys)))(new)
        new, opt_f = apply_updates(self.tx_f(hp), g_gap, opt_f, new)
        # gda: DomainBed's main optimiser then holds only the adversarial head: phi, w stay
        gda = jnp.asarray(hp["gda"]) > 0.5
        keep = lambda old, upd: jax.tree.map(lambda o, u: jnp.where(gda, o, u), old, upd)  # noqa: E731
        params, opt_f, opt_c = keep(params, new), keep(state["opt"], opt_f), keep(state["opt_c"], opt_c)
        # 3.-4. the adversarial head restarts from w and ascends the gap inside B(w, delta)
        center = params["classifier"]

        def ascend(_, carry):
            adv, _ = carry
            gap, g_adv = jax.value_and_grad(
                lambda a: hp["t_lambda"] * loss_gap(self.env_risks(params, a, xs, ys)))(adv)
            adv = jax.tree.map(lambda a, ga: a + hp["lr_d"] * ga, adv, g_adv)
            return project(adv, center, hp["delta"]), gap

        n_adv = jnp.asarray(hp["d_steps_per_g"]).astype(jnp.int32)
        adv, gap = jax.lax.fori_loop(0, n_adv, ascend, (jax.tree.map(jnp.copy, center), jnp.zeros(())))
        new_state = {**state, "params": params, "adv": adv, "opt": opt_f, "opt_c": opt_c, "step": state["step"] + 1}
        return new_state, {"loss": loss, "gap": gap}
