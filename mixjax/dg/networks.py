"""Networks for DG algorithms: featuriser + linear classifier, as pure functions of parameters.

DomainBed picks the featuriser by input shape (MLP for 1-D inputs, MNIST_CNN
for 28x28, ResNet for larger images); ``featurizer="auto"`` does the same
here. Parameters are plain ``nnx.State`` pytrees so that a DG step is a pure
function ``(params, x) -> logits`` that can be vmapped over many models.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
from flax import nnx

from mixjax.models.cnn import DOMAINBED_WIDTHS, MNISTCNN
from mixjax.models.mlp import MLP
from mixjax.models.resnet import ResNet

FEATURIZERS = ("auto", "cnn", "mlp", "resnet")


class Network(nnx.Module):
    """``logits = classifier(featurizer(x))``."""

    def __init__(self, featurizer: nnx.Module, num_classes: int, *, rngs: nnx.Rngs):
        self.featurizer = featurizer
        self.classifier = nnx.Linear(featurizer.n_outputs, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classifier(self.featurizer(x))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetSpec:
    """Everything that fixes the network's shapes (a static part of a DG step)."""

    input_shape: tuple[int, ...]
    num_classes: int
    featurizer: str = "auto"
    cnn_widths: tuple[int, ...] = DOMAINBED_WIDTHS
    mlp_width: int = 256
    mlp_depth: int = 3
    resnet_widths: tuple[int, ...] = (16, 32, 64)
    resnet_blocks: int = 1

    def __post_init__(self):
        if self.featurizer not in FEATURIZERS:
            raise ValueError(f"featurizer={self.featurizer!r}; choose one of {FEATURIZERS}")

    @property
    def kind(self) -> str:
        if self.featurizer != "auto":
            return self.featurizer
        if len(self.input_shape) == 1:
            return "mlp"
        return "cnn" if self.input_shape[:2] == (28, 28) else "resnet"

    def build(self, rngs: nnx.Rngs) -> Network:
        kind = self.kind
        if kind == "mlp":
            n_in = 1
            for d in self.input_shape:
                n_in *= d
            feat = MLP(n_in, self.mlp_width, width=self.mlp_width, depth=self.mlp_depth, rngs=rngs)
        elif kind == "cnn":
            feat = MNISTCNN(self.input_shape[-1], widths=self.cnn_widths, rngs=rngs)
        else:
            feat = ResNet(self.input_shape[-1], widths=self.resnet_widths, blocks=self.resnet_blocks, rngs=rngs)
        return Network(feat, self.num_classes, rngs=rngs)


class Functional:
    """A module as ``graphdef`` + ``init(key) -> params`` + ``merge(params)``."""

    def __init__(self, build):
        self._build = build
        self.abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))  # shapes only, no arrays
        self.graphdef = nnx.split(self.abstract)[0]

    def init(self, key: jax.Array) -> nnx.State:
        return nnx.split(self._build(nnx.Rngs(params=key)))[1]

    def merge(self, params: nnx.State):
        return nnx.merge(self.graphdef, params)


@functools.lru_cache(maxsize=64)
def network(spec: NetSpec) -> Functional:
    return Functional(spec.build)


@functools.lru_cache(maxsize=64)
def mlp(in_features: int, out_features: int, width: int, depth: int) -> Functional:
    return Functional(lambda rngs: MLP(in_features, out_features, width=width, depth=depth, rngs=rngs))


@functools.lru_cache(maxsize=64)
def embedding(num: int, features: int) -> Functional:
    return Functional(lambda rngs: nnx.Embed(num, features, rngs=rngs))


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def as_tuple(x: Sequence[int] | int) -> tuple[int, ...]:
    return tuple(x) if not isinstance(x, int) else (x,)
