"""A small pre-activation-free ResNet featuriser in flax.nnx (ResNet-8/14/20 class).

Stem conv3x3(widths[0]); then one stage per width, each ``blocks`` basic blocks
(conv3x3 -> GroupNorm -> ReLU -> conv3x3 -> GroupNorm, + shortcut, ReLU); the
first block of every stage after the first has stride 2 and a 1x1 projection
shortcut. Global average pool -> ``widths[-1]`` features.

Deviation from DomainBed's ResNet-18/50: GroupNorm instead of BatchNorm, so
the model has no running statistics and the DG step stays a pure function of
parameters (it is vmapped over many models); and no ImageNet pretraining
(offline). It is meant for 28x28-64x64 inputs, e.g. TFDS image domains.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv(cin: int, cout: int, stride: int, k: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (k - 1) // 2
    return nnx.Conv(cin, cout, kernel_size=(k, k), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=False, rngs=rngs)


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, stride, 3, rngs)
        self.norm1 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.conv2 = _conv(cout, cout, 1, 3, rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.proj = _conv(cin, cout, stride, 1, rngs) if (stride != 1 or cin != cout) else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return jax.nn.relu(h + (x if self.proj is None else self.proj(x)))


class ResNet(nnx.Module):
    def __init__(
        self, in_channels: int, *, widths: Sequence[int] = (16, 32, 64), blocks: int = 1, groups: int = 8, rngs: nnx.Rngs
    ):
        self.stem = _conv(in_channels, widths[0], 1, 3, rngs)
        self.stem_norm = nnx.GroupNorm(widths[0], num_groups=groups, rngs=rngs)
        layers, cin = [], widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (s > 0 and b == 0) else 1, groups, rngs))
                cin = w
        self.blocks = nnx.List(layers)
        self.n_outputs = widths[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x, axis=(1, 2))
