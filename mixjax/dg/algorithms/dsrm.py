"""DSRM / DRM, domain-specific risk minimisation (Zhang et al., "Domain-Specific Risk
Minimization for Out-of-Distribution Generalization", KDD 2023, arXiv 2208.08661), the
authors' DomainBed code (yfzhang114/AdaNPC ``domainbed/algorithms.py`` ``DRM`` and
``domainbed/hparams_registry.py``, commit 6fc8256), with its default ``lf_alg = 'entropy'``.

A shared featuriser phi, one linear head h_e per training env and one shared head h_K:

    L = (1/K) sum_e [ CE(h_e(phi(x_e)), y_e) + CE(h_K(phi(x_e)), y_e) ] / 2

one Adam(lr, weight_decay) over phi and all K + 1 heads. Prediction (test-time model
selection): the head whose softmax entropy, averaged over the *batch* being predicted, is
smallest gives the logits,

    i* = argmin_i mean_n H(softmax(h_i(phi(x_n)))),   i in 0..K (first on ties, as torch's ``<``)

so a prediction depends on the other inputs of its batch (``mixjax dg sweep`` predicts in
chunks of ``max(32, eval_batch // jobs)``; DomainBed's evaluation batches are 64).
The code's other selectors (a domain discriminator, ``lf_alg = 'nn'``; prototype distances,
``'cosine'``/``'p*'``) are not implemented; the registry fixes ``lf_alg`` to ``'entropy'``
in its random search too, and DRM has no other hyperparameter of its own.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def init_heads(key, num_heads: int, dim: int, num_classes: int):
    """{"kernel": f32[E, D, C], "bias": f32[E, C]}: E linear heads with flax's Linear defaults."""
    kernel = jax.vmap(lambda k: nnx.initializers.lecun_normal()(k, (dim, num_classes)))(jax.random.split(key, num_heads))
    return {"kernel": kernel, "bias": jnp.zeros((num_heads, num_classes))}


def dsrm_loss(z, ys, heads, shared_logits):
    """z f32[K, b, D] features, ys int32[K, b], heads of K envs, shared_logits f32[K, b, C]."""
    own = jnp.einsum("kbd,kdc->kbc", z, heads["kernel"]) + heads["bias"][:, None, :]
    k = z.shape[0]
    per_env = [(cross_entropy(own[e], ys[e]) + cross_entropy(shared_logits[e], ys[e])) / 2 for e in range(k)]
    return sum(per_env) / k


def min_entropy_logits(all_logits):
    """all_logits f32[E, N, C] -> the f32[N, C] of the head with the smallest mean entropy."""
    logp = jax.nn.log_softmax(all_logits, -1)
    ent = -(jnp.exp(logp) * logp).sum(-1).mean(-1)  # [E]
    return all_logits[jnp.argmin(ent)]


@register
class DSRM(Algorithm):
    name = "dsrm"

    def init(self, key, hp):
        k_net, k_heads = jax.random.split(key)
        params = self.model.init(k_net)
        d = self.model.abstract.featurizer.n_outputs
        heads = init_heads(k_heads, self.num_envs, d, self.net.num_classes)
        return {"params": params, "heads": heads, "opt": self.tx(hp).init((params, heads)),
                "step": jnp.zeros((), jnp.int32)}

    def objective(self, trainable, xs, ys):
        params, heads = trainable
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        shared = self.classify(params, z).reshape(k, b, -1)
        return dsrm_loss(z.reshape(k, b, -1), ys, heads, shared)

    def update(self, hp, state, xs, ys, key):
        trainable = (state["params"], state["heads"])
        loss, grads = jax.value_and_grad(self.objective)(trainable, xs, ys)
        (params, heads), opt = apply_updates(self.tx(hp), grads, state["opt"], trainable)
        return {**state, "params": params, "heads": heads, "opt": opt, "step": state["step"] + 1}, {"loss": loss}

    def predict(self, state, x):
        z = self.features(state["params"], x)
        own = jnp.einsum("nd,edc->enc", z, state["heads"]["kernel"]) + state["heads"]["bias"][:, None, :]
        return min_entropy_logits(jnp.concatenate([own, self.classify(state["params"], z)[None]], 0))
