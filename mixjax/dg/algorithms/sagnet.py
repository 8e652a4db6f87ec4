"""SagNet, style-agnostic networks (Nam et al., CVPR 2021, arXiv 1910.11645, Algorithm 1),
DomainBed's form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``SagNet``,
commit b93c22a): style/content randomisation of the featuriser's output vector (DomainBed's
active code; its ResNet-layer variant is commented out there).

For features z f32[N, D] (per example: mean mu and unbiased variance s2 over the D entries),
alpha ~ U(0, 1) per example and a random permutation pi, with eps = 1e-5:

    zhat = (z - mu) / sqrt(s2 + eps)
    style randomisation:   z' = zhat * sqrt(s2' + eps) + mu',
                           mu' = alpha mu + (1 - alpha) mu[pi],  s2' = alpha s2 + (1 - alpha) s2[pi]
    content randomisation: z' = stopgrad(zhat[pi]) * sqrt(s2 + eps) + mu

One update = three steps with three torch-style Adams (featuriser f, content head c, style
head s; each with its own moment estimates and step count):

    1. L_c = CE(c(style_rand(f(x))), y)                 -> step f and c
    2. L_s = CE(s(content_rand(f(x))), y)               -> step s
    3. L_adv = -sag_w_adv * mean_{i,k} log_softmax(s(content_rand(f(x))))_ik  -> step f

(each randomisation draws fresh alpha and pi). Prediction: c(f(x)).
Hyperparameters: sag_w_adv 0.1 (10^U(-2,1)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg import networks
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy, only_part
from mixjax.dg.networks import Functional

EPS = 1e-5


def randomize(z, alpha, perm, what: str):
    """DomainBed ``SagNet.randomize`` for 2-D features z f32[N, D]; alpha f32[N, 1], perm int[N]."""
    mean = z.mean(-1, keepdims=True)
    var = z.var(-1, keepdims=True, ddof=1)
    zhat = (z - mean) / jnp.sqrt(var + EPS)
    if what == "style":
        mean = alpha * mean + (1 - alpha) * mean[perm]
        var = alpha * var + (1 - alpha) * var[perm]
    else:
        zhat = jax.lax.stop_gradient(zhat[perm])
    return zhat * jnp.sqrt(var + EPS) + mean


def _draw(key, n):
    ka, kp = jax.random.split(key)
    return jax.random.uniform(ka, (n, 1)), jax.random.permutation(kp, n)


@register
class SagNet(Algorithm):
    name = "sagnet"

    @classmethod
    def own_hparams(cls, small):
        return {"sag_w_adv": H.HParam(0.1, lambda r: 10 ** r.uniform(-2, 1))}

    @property
    def style_module(self) -> Functional:
        return networks.linear(self.model.abstract.featurizer.n_outputs, self.net.num_classes)

    def tx_f(self, hp):
        return only_part("featurizer", self.tx(hp))

    def tx_c(self, hp):
        return only_part("classifier", self.tx(hp))

    def init(self, key, hp):
        k_net, k_s = jax.random.split(key)
        params = self.model.init(k_net)
        style = self.style_module.init(k_s)
        return {"params": params, "style": style, "opt": self.tx_f(hp).init(params),
                "opt_c": self.tx_c(hp).init(params), "opt_s": self.tx(hp).init(style),
                "step": jnp.zeros((), jnp.int32)}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        n = k * b
        k1, k2, k3 = jax.random.split(key, 3)
        style_logits = lambda s, z: self.style_module.merge(s)(z)  # noqa: E731

        def content_loss(params):
            alpha, perm = _draw(k1, n)
            return cross_entropy(self.classify(params, randomize(self.features(params, x), alpha, perm, "style")), y)

        loss_c, g = jax.value_and_grad(content_loss)(state["params"])
        params, opt_f = apply_updates(self.tx_f(hp), g, state["opt"], state["params"])
        params, opt_c = apply_updates(self.tx_c(hp), g, state["opt_c"], params)

        def style_loss(style):
            alpha, perm = _draw(k2, n)
            return cross_entropy(style_logits(style, randomize(self.features(params, x), alpha, perm, "content")), y)

        loss_s, g_s = jax.value_and_grad(style_loss)(state["style"])
        style, opt_s = apply_updates(self.tx(hp), g_s, state["opt_s"], state["style"])

        def adv_loss(p):
            alpha, perm = _draw(k3, n)
            z = randomize(self.features(p, x), alpha, perm, "content")
            return -hp["sag_w_adv"] * jax.nn.log_softmax(style_logits(style, z), -1).mean()

        loss_adv, g_adv = jax.value_and_grad(adv_loss)(params)
        params, opt_f = apply_updates(self.tx_f(hp), g_adv, opt_f, params)
        new = {**state, "params": params, "style": style, "opt": opt_f, "opt_c": opt_c, "opt_s": opt_s,
               "step": state["step"] + 1}
        return new, {"loss": loss_c, "loss_c": loss_c, "loss_s": loss_s, "loss_adv": loss_adv}
