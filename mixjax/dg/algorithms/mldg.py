"""MLDG, meta-learning domain generalisation (Li et al., AAAI 2018, arXiv 1710.03463,
Algorithm 1 / Eq. 3), DomainBed's first-order form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``MLDG.update`` and ``lib/misc.py`` ``split_meta_train_test``,
commit b93c22a).

Each step a random permutation pi of the K training envs gives meta-train envs
pi[:K - m] and meta-test envs pi[K - m:], paired as zip(meta_train, cycle(meta_test))
(m = n_meta_test). For each pair (i, j):

    G_i = grad CE(theta; x_i, y_i)
    theta'_i = one step of a *fresh* Adam(lr, weight_decay) from theta on G_i
    G_j = grad CE(theta'_i; x_j, y_j)                (first order: no second derivatives)

    g = (1/K) sum_pairs (G_i + mldg_beta * G_j),   theta <- Adam(theta, g)   (the outer optimiser)

Reported loss: (1/K) sum_pairs (CE_i + mldg_beta * CE_j). With K <= m there are no pairs and
g = 0 (as in DomainBed; Adam's weight decay still acts).
Hyperparameters: mldg_beta 1.0 (10^U(-1,1)), n_meta_test 2 (choice {1, 2}; static: it fixes
the number of pairs).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def meta_pairs(perm: jax.Array, n_meta_test: int) -> tuple[jax.Array, jax.Array]:
    """(meta-train env, meta-test env) index arrays of ``split_meta_train_test``."""
    k = perm.shape[0]
    n_pairs = max(k - n_meta_test, 0)
    p = jnp.arange(n_pairs)
    return perm[p], perm[k - n_meta_test + p % n_meta_test]


def mldg_grads(loss_fn, params, xs, ys, perm, n_meta_test, beta, inner_tx):
    """(g, reported objective) of one MLDG step; ``loss_fn(params, x, y)`` is the CE of a batch."""
    k = xs.shape[0]
    tr, te = meta_pairs(perm, n_meta_test)
    total = jax.tree.map(jnp.zeros_like, params)
    objective = jnp.zeros(())
    for a in range(tr.shape[0]):  # static count; indices are traced
        xi, yi, xj, yj = xs[tr[a]], ys[tr[a]], xs[te[a]], ys[te[a]]
        li, gi = jax.value_and_grad(loss_fn)(params, xi, yi)
        inner, _ = apply_updates(inner_tx, gi, inner_tx.init(params), params)
        lj, gj = jax.value_and_grad(loss_fn)(inner, xj, yj)
        total = jax.tree.map(lambda t, u, v: t + (u + beta * v) / k, total, gi, gj)
        objective = objective + li + beta * lj
    return total, objective / k


@register
class MLDG(Algorithm):
    name = "mldg"

    @classmethod
    def own_hparams(cls, small):
        return {
            "mldg_beta": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
            "n_meta_test": H.HParam(2, lambda r: int(r.choice([1, 2]))),
        }

    def update(self, hp, state, xs, ys, key):
        perm = jax.random.permutation(key, xs.shape[0])
        loss_fn = lambda p, x, y: cross_entropy(self.logits(p, x), y)  # noqa: E731
        grads, objective = mldg_grads(loss_fn, state["params"], xs, ys, perm, self.static_hp("n_meta_test"),
                                      hp["mldg_beta"], self.tx(hp))
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], state["params"])
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": objective}
