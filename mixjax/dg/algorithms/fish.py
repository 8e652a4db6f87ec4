"""Fish (Shi et al., ICLR 2022, arXiv 2104.09937), DomainBed's form.

A clone theta~ <- theta takes one inner Adam step per training env, in env order,
with the inner Adam state carried across outer steps; then

    theta <- theta + meta_lr * (theta~ - theta).

It approximates maximising the inner product of per-env gradients (IDGM).
DomainBed omits the official ``/ meta_steps`` factor and the ERM warm-up
(reference section 4); we follow DomainBed. Default meta_lr 0.5 ({0.05, 0.1, 0.5}).
"""

import jax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def fish_meta_update(params, inner_params, meta_lr):
    return jax.tree.map(lambda p, q: p + meta_lr * (q - p), params, inner_params)


@register
class Fish(Algorithm):
    name = "fish"

    @classmethod
    def own_hparams(cls, small):
        return {"meta_lr": H.HParam(0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])))}

    def update(self, hp, state, xs, ys, key):
        tx = self.tx(hp)

        def inner(carry, batch):
            p, opt = carry
            x, y = batch
            loss, g = jax.value_and_grad(lambda q: cross_entropy(self.logits(q, x), y))(p)
            p, opt = apply_updates(tx, g, opt, p)
            return (p, opt), loss

        (inner_params, opt), losses = jax.lax.scan(inner, (state["params"], state["opt"]), (xs, ys))
        params = fish_meta_update(state["params"], inner_params, hp["meta_lr"])
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": losses.mean()}
