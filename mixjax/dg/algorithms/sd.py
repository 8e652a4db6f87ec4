"""SD, spectral decoupling (Pezeshki et al., "Gradient starvation", NeurIPS 2021,
arXiv 2011.09468, Eq. 25), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``SD``, commit b93c22a).

On the concatenated batch with logits p f32[N, C]:

    L = CE(p, y) + sd_reg * mean(p^2)          (mean over all N x C entries)

Hyperparameters: sd_reg 0.1 (10^U(-5,-1)). The reported ``loss`` is the CE part.
"""

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy


def sd_penalty(logits):
    return (logits**2).mean()


@register
class SD(Algorithm):
    name = "sd"

    @classmethod
    def own_hparams(cls, small):
        return {"sd_reg": H.HParam(0.1, lambda r: 10 ** r.uniform(-5, -1))}

    def loss(self, params, hp, state, xs, ys, key):
        logits = self.env_logits(params, xs)
        ce = cross_entropy(logits, ys)
        penalty = sd_penalty(logits)
        return ce + hp["sd_reg"] * penalty, {"loss": ce, "penalty": penalty}
