"""DomainBed's small MNIST CNN featuriser in flax.nnx.

``MNIST_CNN`` (facebookresearch/DomainBed ``domainbed/networks.py``):
conv3x3(64) -> conv3x3(128, stride 2) -> conv3x3(128) -> conv3x3(128), each
followed by ReLU and GroupNorm(8 groups); global average pool -> 128-d
features. Inputs are channels-last ``f32[B, H, W, C]``. ``widths`` lets tests
and CPU experiments shrink it (DomainBed's is ``(64, 128, 128, 128)``).
Padding is explicit (1 on every side) to match PyTorch's ``padding=1``;
flax's "SAME" would pad a stride-2 conv asymmetrically.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DOMAINBED_WIDTHS = (64, 128, 128, 128)


class MNISTCNN(nnx.Module):
    """Four 3x3 convs (second has stride 2) + ReLU + GroupNorm, global mean pool."""

    def __init__(self, in_channels: int, *, widths: Sequence[int] = DOMAINBED_WIDTHS, groups: int = 8, rngs: nnx.Rngs):
        if len(widths) != 4:
            raise ValueError(f"MNISTCNN needs 4 widths, got {tuple(widths)}")
        for w in widths:
            if w % groups:
                raise ValueError(f"MNISTCNN width {w} is not divisible by groups={groups}")
        if widths[-1] < 2 * groups:
            # one channel per group: GroupNorm makes every channel's spatial mean exactly 0 (plus
            # its bias), so the pooled features would not depend on the input at all
            raise ValueError(f"MNISTCNN last width {widths[-1]} must be >= 2 * groups ({2 * groups})")
        strides = (1, 2, 1, 1)
        chans = (in_channels, *widths)
        self.convs = nnx.List(
            [
                nnx.Conv(chans[i], chans[i + 1], kernel_size=(3, 3), strides=strides[i], padding=((1, 1), (1, 1)), rngs=rngs)
                for i in range(4)
            ]
        )
        self.norms = nnx.List([nnx.GroupNorm(w, num_groups=groups, rngs=rngs) for w in widths])
        self.n_outputs = widths[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(self.convs, self.norms):
            x = norm(jax.nn.relu(conv(x)))
        return jnp.mean(x, axis=(1, 2))
