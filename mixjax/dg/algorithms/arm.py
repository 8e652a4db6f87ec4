"""ARM-CML, adaptive risk minimisation with a context network (Zhang et al., "Adaptive risk
minimization: learning to adapt to domain shift", NeurIPS 2021, arXiv 2007.02931), DomainBed's
form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``ARM``, ``networks.py``
``ContextNet``, commit b93c22a).

A context network c (Conv5x5(C->64) - BN - ReLU - Conv5x5(64->64) - BN - ReLU - Conv5x5(64->1),
'same' padding) maps each image to one channel; a batch of n images is cut into groups of
s = batch_size images (or one group of n if s does not divide n), each group's context is its
mean map, and the network f sees the image with that map as an extra channel:

    logits_i = f([x_i, (1/s) sum_{j in group(i)} c(x_j)]).

Training is ERM on the concatenation of the K env batches (K * batch_size images), so each
env's batch is its own group: L = CE(logits, y), one Adam(lr, weight_decay) step.

As DomainBed's code runs: ERM's optimiser is created before the context network, so only f is
trained; c keeps its initial weights and BatchNorm affine parameters, and only its BatchNorm
running statistics move (torch train mode: batch mean and biased variance normalise; running
mean/var <- 0.9 * running + 0.1 * batch, the variance unbiased; eps 1e-5). Prediction uses the
running statistics (torch eval mode). Evaluation groups: DomainBed evaluates in batches of 64
images of one env, so the sweep evaluates ARM per env in chunks of ``eval_context = 64`` (the
last chunk of an env wraps around to its first images instead of DomainBed's shorter batch).

Images only (channels-last ``[n, H, W, C]``); the featuriser gets C + 1 input channels.
Hyperparameters (``hparams_registry.py``): batch_size 8 (fixed) on large-image datasets,
DomainBed's common values on small ones; no own hyperparameters.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy
from mixjax.dg.networks import Functional, network

WIDTH, KERNEL, BN_EPS, BN_MOMENTUM = 64, 5, 1e-5, 0.1


def init_context_net(key, channels: int):
    """Parameters (flax-default lecun-normal kernels, zero biases, BN scale 1 / bias 0) and the
    BatchNorm running statistics (mean 0, var 1) of DomainBed's ``ContextNet``."""
    init = jax.nn.initializers.lecun_normal()
    dims = [(channels, WIDTH), (WIDTH, WIDTH), (WIDTH, 1)]
    keys = jax.random.split(key, 3)
    params = {f"conv{i}": {"w": init(keys[i], (KERNEL, KERNEL, a, b), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
              for i, (a, b) in enumerate(dims)}
    for i in range(2):
        params[f"bn{i}"] = {"scale": jnp.ones((WIDTH,), jnp.float32), "bias": jnp.zeros((WIDTH,), jnp.float32)}
    stats = {f"bn{i}": {"mean": jnp.zeros((WIDTH,), jnp.float32), "var": jnp.ones((WIDTH,), jnp.float32)}
             for i in range(2)}
    return params, stats


def _conv(p, x):
    y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def _batch_norm(p, s, x, train: bool):
    if train:
        n = x.shape[0] * x.shape[1] * x.shape[2]
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        new = {"mean": (1 - BN_MOMENTUM) * s["mean"] + BN_MOMENTUM * mean,
               "var": (1 - BN_MOMENTUM) * s["var"] + BN_MOMENTUM * var * n / (n - 1)}
    else:
        mean, var, new = s["mean"], s["var"], s
    return (x - mean) / jnp.sqrt(var + BN_EPS) * p["scale"] + p["bias"], new


def context_net(params, stats, x, train: bool):
    """(c(x) f32[n, H, W, 1], new BatchNorm statistics)."""
    new = {}
    h = x
    for i in range(2):
        h, new[f"bn{i}"] = _batch_norm(params[f"bn{i}"], stats[f"bn{i}"], _conv(params[f"conv{i}"], h), train)
        h = jax.nn.relu(h)
    return _conv(params["conv2"], h), new


def with_context(x, context, support: int):
    """[x, group-mean context] along channels; groups of ``support`` rows if it divides n, else one."""
    n = x.shape[0]
    s = support if n % support == 0 else n
    mean = context.reshape(n // s, s, *context.shape[1:]).mean(1)
    return jnp.concatenate([x, jnp.repeat(mean, s, axis=0)], -1)


@register
class ARM(Algorithm):
    name = "arm"
    eval_context = 64  # DomainBed's evaluation batch size (``train.py``)

    @classmethod
    def hparam_space(cls, small):
        space = H.common_space(small)
        if not small:
            space["batch_size"] = H.HParam(8, lambda r: 8)
        return space

    @property
    def model(self) -> Functional:
        if len(self.net.input_shape) != 3:
            raise ValueError(f"ARM needs image inputs [H, W, C]; got input_shape {self.net.input_shape}")
        h, w, c = self.net.input_shape
        return network(dataclasses.replace(self.net, input_shape=(h, w, c + 1)))

    @property
    def support(self) -> int:
        return self.static_hp("batch_size")

    def init(self, key, hp):
        k_net, k_ctx = jax.random.split(key)
        ctx, stats = init_context_net(k_ctx, self.net.input_shape[-1])
        return {**super().init(k_net, hp), "context": ctx, "bn": stats}

    def _logits(self, params, ctx, stats, x, train):
        context, new_stats = context_net(ctx, stats, x, train)
        return self.logits(params, with_context(x, context, self.support)), new_stats

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x = xs.reshape(k * b, *xs.shape[2:])
        # the context network is not trained (DomainBed), so no gradient flows to it
        ctx = jax.lax.stop_gradient(state["context"])

        def loss_fn(p):
            logits, stats = self._logits(p, ctx, state["bn"], x, True)
            return cross_entropy(logits, ys.reshape(-1)), stats

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        params, opt = apply_updates(self.tx(hp), g, state["opt"], state["params"])
        return {**state, "params": params, "opt": opt, "bn": stats, "step": state["step"] + 1}, {"loss": loss}

    def predict(self, state, x):
        return self._logits(state["params"], state["context"], state["bn"], x, False)[0]

