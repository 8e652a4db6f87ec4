"""IGA, inter-environmental gradient alignment (Koyama & Yamaguchi, arXiv 2008.01883v2),
DomainBed's form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``IGA``, commit b93c22a).

With per-env risks R_e (one forward per env) and g_e = grad_theta R_e:

    gbar = grad_theta mean_e R_e                  (computed without a graph: a constant)
    L = mean_e R_e + penalty * sum_e ||g_e - gbar||^2

The penalty's gradient flows through g_e (second order, DomainBed's ``create_graph=True``)
but not through gbar. Hyperparameters: penalty 1000 (10^U(1,5)).
"""

import jax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy, tree_dot


def iga_penalty(env_grads, mean_grad):
    """sum_e ||g_e - stopgrad(gbar)||^2; env_grads: pytree with a leading env axis."""
    diff = jax.tree.map(lambda g, m: g - jax.lax.stop_gradient(m)[None], env_grads, mean_grad)
    return tree_dot(diff, diff)


@register
class IGA(Algorithm):
    name = "iga"

    @classmethod
    def own_hparams(cls, small):
        return {"penalty": H.HParam(1000.0, lambda r: 10 ** r.uniform(1, 5))}

    def loss(self, params, hp, state, xs, ys, key):
        env_risk = lambda p, x, y: cross_entropy(self.logits(p, x), y)  # noqa: E731
        risks, grads = jax.vmap(jax.value_and_grad(env_risk), in_axes=(None, 0, 0))(params, xs, ys)
        mean_grad = jax.tree.map(lambda g: g.mean(0), grads)  # = grad of mean_e R_e
        penalty = iga_penalty(grads, mean_grad)
        mean_loss = risks.mean()
        return mean_loss + hp["penalty"] * penalty, {"loss": mean_loss, "penalty": penalty}
