"""Networks for DG algorithms: featuriser + linear classifier, as pure functions of parameters.

DomainBed picks the featuriser by input shape (MLP for 1-D inputs, MNIST_CNN
for 28x28, ResNet for larger images); ``featurizer="auto"`` does the same
here. Parameters are plain ``nnx.State`` pytrees so that a DG step is a pure
function ``(params, x) -> logits`` that can be vmapped over many models.

``featurizer="resnet18" | "resnet50"`` is DomainBed's ``ResNet`` featuriser
(``domainbed/networks.py``): torchvision's architecture (``mixjax.models.tv_resnet``)
with BatchNorm frozen and dropout on the features, optionally initialised from
ImageNet weights in a local file (``pretrained``). Frozen BatchNorm: the running
statistics are *not* part of the trained parameters (``Functional.init`` returns
only ``nnx.Param`` leaves; ``Functional.merge`` adds the statistics back as
constants), so no optimiser, weight decay or parameter arithmetic of an
algorithm can move them. Dropout (``resnet_dropout``): DomainBed applies it in
training mode only; here the training step opens :func:`training` with a key and
the rate, and the featuriser drops features only inside it - evaluation and
prediction outside it are deterministic, as DomainBed's ``eval()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixjax.models.cnn import DOMAINBED_WIDTHS, MNISTCNN
from mixjax.models.mlp import MLP
from mixjax.models.resnet import ResNet
from mixjax.models.tv_resnet import ARCHS, TVResNet

DOMAINBED_RESNETS = tuple(ARCHS)  # resnet18, resnet50
FEATURIZERS = ("auto", "cnn", "mlp", "resnet", *DOMAINBED_RESNETS)

# (key, rate, calls so far) while a training step is traced; see ``training``
_TRAINING: contextvars.ContextVar[list | None] = contextvars.ContextVar("dg_training", default=None)


@contextlib.contextmanager
def training(key: jax.Array, dropout_rate):
    """Training mode for the forward passes traced inside: DomainBed ResNets drop features
    with probability ``dropout_rate`` (a traced scalar is fine); the i-th featuriser call in
    the step uses ``fold_in(key, i)``, so repeated forwards in one step draw fresh masks."""
    token = _TRAINING.set([key, dropout_rate, 0])
    try:
        yield
    finally:
        _TRAINING.reset(token)


def feature_dropout(z: jax.Array) -> jax.Array:
    """``nn.Dropout`` in training mode (inverted scaling by 1 / (1 - p)); identity outside :func:`training`."""
    ctx = _TRAINING.get()
    if ctx is None:
        return z
    key, rate, calls = ctx
    ctx[2] = calls + 1
    keep = jax.random.uniform(jax.random.fold_in(key, calls), z.shape) >= rate
    return jnp.where(keep, z / (1.0 - rate), 0.0).astype(z.dtype)


class DomainBedResNet(nnx.Module):
    """DomainBed's ``ResNet`` featuriser: ``dropout(network(x))``, ``network`` a torchvision
    ResNet-18/50 without ``fc`` and with frozen BatchNorm; features of size 512 / 2048."""

    def __init__(self, arch: str, in_channels: int, *, rngs: nnx.Rngs):
        self.network = TVResNet(arch, in_channels, rngs=rngs)
        self.n_outputs = self.network.n_outputs

    def __call__(self, x: jax.Array) -> jax.Array:
        return feature_dropout(self.network(x))


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
    pretrained: str | None = None  # resnet18/resnet50: torchvision state_dict file (.safetensors/.npz)

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
        elif kind in DOMAINBED_RESNETS:
            feat = DomainBedResNet(kind, self.input_shape[-1], rngs=rngs)
        else:
            feat = ResNet(self.input_shape[-1], widths=self.resnet_widths, blocks=self.resnet_blocks, rngs=rngs)
        return Network(feat, self.num_classes, rngs=rngs)


class Functional:
    """A module as ``graphdef`` + ``init(key) -> params`` + ``merge(params)``.

    A module with variables other than ``nnx.Param`` (the frozen BatchNorm statistics of a
    DomainBed ResNet) keeps them out of ``params``: ``init`` returns the Params only and
    ``merge`` adds the fixed others, ``constants`` - ``constants(abstract_rest)`` if given,
    else BatchNorm's initial values (mean 0, var 1). ``setup(module)`` edits a freshly built
    module in place before the split (e.g. loads pretrained weights).
    """

    def __init__(self, build, setup=None, constants=None):
        self._build = build
        self._setup = setup
        self.abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))  # shapes only, no arrays
        self.frozen = bool(jax.tree.leaves(nnx.state(self.abstract, nnx.Not(nnx.Param))))
        if not self.frozen:
            self.graphdef = nnx.split(self.abstract)[0]
            return
        self.graphdef, _, rest = nnx.split(self.abstract, nnx.Param, ...)
        # numpy arrays: concrete even when the first use is inside a trace (jit / vmap)
        self.constants = constants(rest) if constants is not None else batchnorm_initial(rest)

    def init(self, key: jax.Array) -> nnx.State:
        module = self._build(nnx.Rngs(params=key))
        if not self.frozen:
            return nnx.split(module)[1]
        if self._setup is not None:
            self._setup(module)
        return nnx.split(module, nnx.Param, ...)[1]

    def merge(self, params: nnx.State):
        if not self.frozen:
            return nnx.merge(self.graphdef, params)
        return nnx.merge(self.graphdef, params, self.constants)


def _keys(path) -> tuple:
    """A state leaf's path as plain names / indices (the Variable's own ``.value`` dropped)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            continue
        out.append(k.key if isinstance(k, jax.tree_util.DictKey) else getattr(k, "idx", k))
    return tuple(out)


def batchnorm_initial(abstract: nnx.State) -> nnx.State:
    """BatchNorm's initial running statistics (torch and flax: mean 0, var 1) for an abstract state."""
    def init(path, x):
        name = _keys(path)[-1]
        if name not in ("mean", "var"):
            raise ValueError(f"non-trainable variable {path} is not a BatchNorm statistic")
        return (np.ones if name == "var" else np.zeros)(x.shape, x.dtype)

    return jax.tree_util.tree_map_with_path(init, abstract)


def _pretrained(spec: NetSpec):
    """(setup, constants) that put ``spec.pretrained`` into a DomainBed ResNet's torchvision part;
    the file is read and checked once, here, before any model is built."""
    from mixjax.models import tv_resnet_weights as W

    source = str(spec.pretrained)
    sd = W.read_file(spec.pretrained)
    arrays = W.check(nnx.eval_shape(lambda: TVResNet(spec.kind, spec.input_shape[-1], rngs=nnx.Rngs(0))), sd, source)

    def constants(abstract: nnx.State) -> nnx.State:
        def value(path, x):
            keys = _keys(path)
            if keys[:2] != ("featurizer", "network"):
                raise ValueError(f"non-trainable variable {path} outside the pretrained network")
            return arrays[W.torch_name(keys[2:])]

        return jax.tree_util.tree_map_with_path(value, abstract)

    return (lambda net: W.load_into(net.featurizer.network, sd, source)), constants


@functools.lru_cache(maxsize=64)
def network(spec: NetSpec) -> Functional:
    if spec.pretrained is None:
        return Functional(spec.build)
    if spec.kind not in DOMAINBED_RESNETS:
        raise ValueError(f"pretrained weights need featurizer resnet18 or resnet50, not {spec.kind!r}")
    setup, constants = _pretrained(spec)
    return Functional(spec.build, setup=setup, constants=constants)


@functools.lru_cache(maxsize=64)
def mlp(in_features: int, out_features: int, width: int, depth: int) -> Functional:
    return Functional(lambda rngs: MLP(in_features, out_features, width=width, depth=depth, rngs=rngs))


@functools.lru_cache(maxsize=64)
def linear(in_features: int, out_features: int) -> Functional:
    return Functional(lambda rngs: nnx.Linear(in_features, out_features, rngs=rngs))


@functools.lru_cache(maxsize=64)
def embedding(num: int, features: int) -> Functional:
    return Functional(lambda rngs: nnx.Embed(num, features, rngs=rngs))


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def as_tuple(x: Sequence[int] | int) -> tuple[int, ...]:
    return tuple(x) if not isinstance(x, int) else (x,)
