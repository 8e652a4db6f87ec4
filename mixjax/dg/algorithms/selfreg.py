"""SelfReg, self-supervised contrastive regularisation (Kim et al., ICCV 2021,
arXiv 2104.09841), DomainBed's form (facebookresearch/DomainBed ``domainbed/algorithms.py``
``SelfReg``, commit b93c22a).

On the concatenated batch: f = phi(x), o = w(f), h = cdpl(f) (Linear-BN-ReLU-Linear-BN-ReLU-
Linear-BN, hidden 2D or D if D = 2048; BatchNorm1d in training mode: biased batch variance,
eps 1e-5). Two random permutations pi2, pi3 *within each class*, lam ~ Beta(0.5, 0.5):

    o2 = o[pi2], h2 = h[pi2],  o3 = lam o2 + (1 - lam) o[pi3],  h3 = lam h2 + (1 - lam) h[pi3]
    L_ind = MSE(o, o2) + 0.3 MSE(f, h2),   L_hdl = MSE(o, o3) + 0.3 MSE(f, h3)
    CE = CE(o, y),  c = min(CE, 1) (no gradient)
    L = CE + c (lam L_ind + (1 - lam) L_hdl)

DomainBed builds ``cdpl`` after ERM's optimiser, so its weights are never updated: it is a
fixed random projection (with training-mode BatchNorm) through which the gradient reaches the
featuriser. That is reproduced: ``cdpl`` lives outside ``params``. (Weights use flax's
initialisers, not torch's; see docs/dg.md.) No own hyperparameters.
"""

import jax
import jax.numpy as jnp

from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy

BN_EPS = 1e-5


def within_class_permutation(key, y):
    """A uniformly random permutation that maps every example to one of its own class."""
    u = jax.random.uniform(key, y.shape)
    by_class = jnp.argsort(y, stable=True)
    shuffled = jnp.lexsort((u, y))
    return jnp.zeros_like(y).at[by_class].set(shuffled)


def batch_norm(x):
    """BatchNorm1d, training mode, weight 1 / bias 0 (never trained here)."""
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    return (x - mean) / jnp.sqrt(var + BN_EPS)


def cdpl_init(key, d):
    hidden = d if d == 2048 else 2 * d
    dims = [(d, hidden), (hidden, hidden), (hidden, d)]
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(key, len(dims))
    return [{"w": init(k, shape), "b": jnp.zeros(shape[1])} for k, shape in zip(keys, dims)]


def cdpl_apply(layers, x):
    for i, layer in enumerate(layers):
        x = batch_norm(x @ layer["w"] + layer["b"])
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def selfreg_loss(logits, feat, proj, y, lam, perm2, perm3):
    """DomainBed's SelfReg objective given the shuffles and lam -> (loss, CE)."""
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    o2, h2 = logits[perm2], proj[perm2]
    o3 = lam * o2 + (1 - lam) * logits[perm3]
    h3 = lam * h2 + (1 - lam) * proj[perm3]
    ind = mse(logits, o2) + 0.3 * mse(feat, h2)
    hdl = mse(logits, o3) + 0.3 * mse(feat, h3)
    ce = cross_entropy(logits, y)
    c = jnp.minimum(jax.lax.stop_gradient(ce), 1.0)
    return ce + c * (lam * ind + (1 - lam) * hdl), ce


@register
class SelfReg(Algorithm):
    name = "selfreg"

    def init(self, key, hp):
        k_net, k_cdpl = jax.random.split(key)
        state = super().init(k_net, hp)
        return {**state, "cdpl": cdpl_init(k_cdpl, self.model.abstract.featurizer.n_outputs)}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        y = ys.reshape(-1)
        feat = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, feat)
        proj = cdpl_apply(state["cdpl"], feat)
        k_lam, k2, k3 = jax.random.split(key, 3)
        lam = jax.random.beta(k_lam, 0.5, 0.5)
        loss, ce = selfreg_loss(logits, feat, proj, y, lam, within_class_permutation(k2, y),
                                within_class_permutation(k3, y))
        return loss, {"loss": loss, "nll": ce}
