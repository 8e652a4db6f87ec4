"""Fish (Shi et al., ICLR 2022, arXiv 2104.09937), DomainBed's form.

A clone theta~ <- theta takes one inner Adam step per training env, in env order,
with the inner Adam state carried across outer steps; then

    theta <- theta + meta_lr * (theta~ - theta).

It approximates maximising the inner product of per-env gradients (IDGM).
DomainBed omits the official ``/ meta_steps`` factor and the ERM warm-up
(reference section 4); we follow DomainBed (``divide_by_meta_steps=False``).
The meta step itself is the shared ``mixjax.methods.fish.fish_step`` (also used for
text domains). Default meta_lr 0.5 ({0.05, 0.1, 0.5}).
"""

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy
from mixjax.methods.fish import fish_step


@register
class Fish(Algorithm):
    name = "fish"

    @classmethod
    def own_hparams(cls, small):
        return {"meta_lr": H.HParam(0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])))}

    def update(self, hp, state, xs, ys, key):
        loss_fn = lambda p, batch: cross_entropy(self.logits(p, batch[0]), batch[1])  # noqa: E731
        params, opt, losses = fish_step(loss_fn, state["params"], state["opt"], self.tx(hp), (xs, ys),
                                        meta_lr=hp["meta_lr"], divide_by_meta_steps=False)
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": losses.mean()}
