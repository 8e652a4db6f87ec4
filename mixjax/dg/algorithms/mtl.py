"""MTL, marginal transfer learning (Blanchard et al., "Domain generalization by marginal transfer
learning", JMLR 2021, arXiv 1711.07910), DomainBed's neural form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``MTL``, commit b93c22a).

The classifier w: R^{2D} -> R^C sees the features next to a domain embedding:

    logits_e = w([phi(x_e), 1_b m_e^T]),   m_e = mtl_ema * mean_i phi(x_e)_i + (1 - mtl_ema) * M_e,
    M_e <- stopgrad(m_e)                                  (the buffer ``embeddings``, zeros at start),
    L = sum_e CE(logits_e, y_e)                           (a sum over envs, as DomainBed),

one Adam(lr, weight_decay) step on (phi, w). Prediction (no env) uses m = the batch's feature mean.

``mtl`` is DomainBed's code as it runs: ``predict`` ends with
``self.update_embeddings_(features, env).normal_()``, which overwrites the repeated embedding in
place with i.i.d. N(0, 1) entries (torch's ``normal_`` has zero derivative). So the classifier's
second half of inputs is standard normal noise, in training and at evaluation, and the buffer
M_e is updated but never reaches a prediction. mixjax draws that noise from the step key in
training and, at evaluation, from ``fold_in(key(0), step)`` (``predict`` has no key).
``mtl_mean`` is the rule the code states without the ``normal_()``: the classifier sees m_e
(gradient through the batch mean; M_e detached) and, at prediction, the batch mean.

Hyperparameters (``hparams_registry.py``): mtl_ema 0.99 (choice {0.5, 0.9, 0.99, 1}).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy
from mixjax.dg.networks import Functional, NetSpec


class MTLNetwork(nnx.Module):
    """The featuriser of ``spec`` and a linear classifier on [features, embedding]."""

    def __init__(self, spec: NetSpec, *, rngs: nnx.Rngs):
        self.featurizer = spec.build(rngs).featurizer
        self.classifier = nnx.Linear(2 * self.featurizer.n_outputs, spec.num_classes, rngs=rngs)


@functools.lru_cache(maxsize=64)
def mtl_network(spec: NetSpec) -> Functional:
    return Functional(lambda rngs: MTLNetwork(spec, rngs=rngs))


def domain_embedding(z, buffer, ema):
    """(m, new buffer) of ``update_embeddings_``: m = ema * mean(z) + (1 - ema) * buffer."""
    m = ema * z.mean(0) + (1 - ema) * buffer
    return m, jax.lax.stop_gradient(m)


@register
class MTL(Algorithm):
    name = "mtl"
    noise = True  # DomainBed's ``.normal_()``

    @classmethod
    def own_hparams(cls, small):
        return {"mtl_ema": H.HParam(0.99, lambda r: float(r.choice([0.5, 0.9, 0.99, 1.0])))}

    @property
    def model(self) -> Functional:
        return mtl_network(self.net)

    def init(self, key, hp):
        d = self.model.abstract.featurizer.n_outputs
        return {**super().init(key, hp), "embeddings": jnp.zeros((self.num_envs, d), jnp.float32)}

    def _head(self, params, z, m, key):
        second = jax.random.normal(key, z.shape, z.dtype) if self.noise else jnp.broadcast_to(m, z.shape)
        return self.classify(params, jnp.concatenate([z, second], -1))

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        zs = self.features(params, xs.reshape(k * b, *xs.shape[2:])).reshape(k, b, -1)
        m, new_buffer = jax.vmap(domain_embedding, in_axes=(0, 0, None))(zs, state["embeddings"], hp["mtl_ema"])
        logits = jax.vmap(self._head, in_axes=(None, 0, 0, 0))(params, zs, m, jax.random.split(key, k))
        loss = sum(cross_entropy(logits[e], ys[e]) for e in range(k))
        return loss, {"loss": loss, "embeddings": new_buffer}

    carry = ("embeddings",)

    def predict(self, state, x):
        params = state["params"]
        z = self.features(params, x)
        return self._head(params, z, z.mean(0), jax.random.fold_in(jax.random.key(0), state["step"]))


@register
class MTLMean(MTL):
    name = "mtl_mean"
    noise = False
