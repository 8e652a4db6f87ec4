"""torchvision's ResNet-18 / ResNet-50 in flax.nnx, as DomainBed's featuriser.

Architecture: torchvision ``models/resnet.py`` (v1.5: the stride of a Bottleneck sits on its
3x3 conv): ``conv1`` 7x7/2 (pad 3) -> ``bn1`` -> ReLU -> max-pool 3x3/2 (pad 1) -> ``layer1..4``
(BasicBlock x [2, 2, 2, 2] for ResNet-18, Bottleneck x [3, 4, 6, 3] with expansion 4 for
ResNet-50; widths 64, 128, 256, 512; the first block of layers 2-4 has stride 2 and a
``downsample`` = conv1x1/stride + BN) -> global average pool -> 512 / 2048 features. ``fc`` is
dropped (DomainBed replaces it by ``Identity``). Attribute names mirror torchvision's
``state_dict`` keys (``layer2[0].downsample_conv`` is ``layer2.0.downsample.0``), so
``mixjax.models.tv_resnet_weights`` maps a torchvision checkpoint by name.

DomainBed ``domainbed/networks.py`` ``ResNet``: BatchNorm is frozen (``freeze_bn`` puts every
``BatchNorm2d`` in eval mode even while training, so it normalises with the running statistics
and never updates them; its affine weight and bias still train), and ``nn.Dropout(
hparams['resnet_dropout'])`` is applied to the features in training mode only. Here every BN
is ``nnx.BatchNorm(use_running_average=True)`` (eps 1e-5, torch's default); the running
statistics are ``nnx.BatchStat`` variables that ``mixjax.dg.networks`` keeps out of the
trained parameters (they are constants of the compiled step); dropout is applied by
``mixjax.dg.networks.Network`` from a key the training step provides.
DomainBed's adaptation to inputs with ``nc != 3`` channels (``conv1`` channel i copies the
pretrained channel ``i % 3``) is done by the weight loader.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ARCHS = {  # name -> (block, blocks per layer)
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5  # torch.nn.BatchNorm2d


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (k - 1) // 2
    return nnx.Conv(cin, cout, kernel_size=(k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        self.conv1, self.bn1 = _conv(cin, width, 3, stride, rngs), _bn(width, rngs)
        self.conv2, self.bn2 = _conv(width, width, 3, 1, rngs), _bn(width, rngs)
        self.has_downsample = stride != 1 or cin != width
        if self.has_downsample:
            self.downsample_conv, self.downsample_bn = _conv(cin, width, 1, stride, rngs), _bn(width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        skip = self.downsample_bn(self.downsample_conv(x)) if self.has_downsample else x
        return jax.nn.relu(h + skip)


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv(cin, width, 1, 1, rngs), _bn(width, rngs)
        self.conv2, self.bn2 = _conv(width, width, 3, stride, rngs), _bn(width, rngs)
        self.conv3, self.bn3 = _conv(width, cout, 1, 1, rngs), _bn(cout, rngs)
        self.has_downsample = stride != 1 or cin != cout
        if self.has_downsample:
            self.downsample_conv, self.downsample_bn = _conv(cin, cout, 1, stride, rngs), _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        skip = self.downsample_bn(self.downsample_conv(x)) if self.has_downsample else x
        return jax.nn.relu(h + skip)


class TVResNet(nnx.Module):
    """``arch`` in ``ARCHS``; input f32[B, H, W, C] (channels last) -> f32[B, n_outputs]."""

    def __init__(self, arch: str, in_channels: int = 3, *, rngs: nnx.Rngs):
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(ARCHS)}")
        kind, counts = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1, self.bn1 = _conv(in_channels, 64, 7, 2, rngs), _bn(64, rngs)
        cin = 64
        for li, (width, n) in enumerate(zip(WIDTHS, counts)):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, width, 2 if (li > 0 and b == 0) else 1, rngs))
                cin = width * block.expansion
            setattr(self, f"layer{li + 1}", nnx.List(blocks))
        self.n_outputs = cin

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        # torch MaxPool2d(3, 2, padding=1) pads with -inf
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return jnp.mean(x, axis=(1, 2))
