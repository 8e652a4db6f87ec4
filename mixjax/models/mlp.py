"""DomainBed's MLP in flax.nnx (used as a featuriser and as DANN's discriminator).

``MLP`` (facebookresearch/DomainBed ``domainbed/networks.py``): Linear(in, width)
-> ReLU -> (depth - 2) x [Linear(width, width) -> ReLU] -> Linear(width, out).
Inputs of any trailing shape are flattened. DomainBed also puts dropout after
each hidden layer (``mlp_dropout``, default 0); it is omitted here so that the
network is a pure function of its parameters (mixjax's DG steps vmap many
models at once); the default 0 is unchanged.
"""

from __future__ import annotations

import jax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, in_features: int, out_features: int, *, width: int = 256, depth: int = 3, rngs: nnx.Rngs):
        if depth < 2:
            raise ValueError(f"MLP depth must be >= 2 (input and output layers), got {depth}")
        dims = [in_features] + [width] * (depth - 1) + [out_features]
        self.layers = nnx.List([nnx.Linear(dims[i], dims[i + 1], rngs=rngs) for i in range(depth)])
        self.n_outputs = out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
