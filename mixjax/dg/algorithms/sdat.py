"""SDAT, smooth domain-adversarial training (Rangwani et al., "A Closer Look at Smoothness in
Domain Adversarial Training", ICML 2022, arXiv 2206.08213), from the authors' code
val-iisc/SDAT (commit 192083a) ``examples/cdan_sdat.py`` ``train`` (lines 176-214): SAM on
the task loss only inside domain-adversarial training, here on DomainBed's DANN
(``mixjax.dg.algorithms.dann``).

Each step, with theta = (phi, w) and the discriminator D:

    g   = grad_theta CE(w(phi_theta(x)), y)                 (the task loss alone)
    eps = rho * g / (||g|| + 1e-12)                          (SAM's first step, not adaptive)
    at theta + eps:  grads of L_g = CE - lambda * L_d  (theta)  and of L_d  (D)

and the gradients are applied at theta (SAM's second step) - the code backpropagates the
perturbed loss once and steps both optimisers with it. The domain loss never shapes eps:
that is the method (a smooth task loss, an unsmoothed adversarial game). DomainBed's DANN
alternation is kept: a discriminator step applies the D gradients, a generator step the theta
gradients (the code, a domain-adaptation script, steps both every iteration with SGD and a
gradient-reversal warm-up; those are its training setup, not the rule). Hyperparameters:
DANN's, plus ``rho`` (the code's default 0.05; the search {0.01, 0.02, 0.05, 0.1} is the SAM
module's, as the code gives none).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import apply_updates
from mixjax.dg.algorithms.dann import DANN
from mixjax.dg.algorithms.sam import sam_perturbation


@register
class SDAT(DANN):
    name = "sdat"

    @classmethod
    def own_hparams(cls, small):
        return {**super().own_hparams(small),
                "rho": H.HParam(0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])))}

    def update(self, hp, state, xs, ys, key):
        params, disc = state["params"], state["disc"]
        task_grads = jax.grad(lambda p: self._losses(p, disc, hp, xs, ys)[1])(params)
        perturbed = jax.tree.map(jnp.add, params, sam_perturbation(task_grads, hp["rho"]))

        def objective(p, d):
            dl, nll = self._losses(p, d, hp, xs, ys)
            return nll - hp["lambda"] * dl, (dl, nll)

        (g_loss, (d_loss, nll)), g_grads = jax.value_and_grad(objective, has_aux=True)(perturbed, disc)
        d_grads = jax.grad(lambda d: self._losses(perturbed, d, hp, xs, ys)[0])(disc)
        new_disc, new_disc_opt = apply_updates(self.disc_tx(hp), d_grads, state["disc_opt"], disc)
        new_params, new_opt = apply_updates(self.gen_tx(hp), g_grads, state["opt"], params)
        count = state["step"] + 1
        d_steps = hp["d_steps_per_g_step"]
        is_d = jnp.mod(count, 1 + d_steps) < d_steps
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(is_d, u, v), a, b)  # noqa: E731
        new_state = {**state, "params": pick(params, new_params), "opt": pick(state["opt"], new_opt),
                     "disc": pick(new_disc, disc), "disc_opt": pick(new_disc_opt, state["disc_opt"]),
                     "step": count}
        return new_state, {"loss": jnp.where(is_d, d_loss, g_loss), "disc_loss": d_loss, "nll": nll}
