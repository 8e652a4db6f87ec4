"""Load torchvision ResNet weights (a ``state_dict`` saved to .safetensors or .npz) into
:class:`mixjax.models.tv_resnet.TVResNet`. Never downloads: the user provides the file
(docs/dg.md, "Pretrained ImageNet weights", has the 5-line script that writes one).

Name mapping (torchvision ``state_dict`` key -> flax path):

    conv1.weight                      -> conv1.kernel             (O,I,kh,kw) -> (kh,kw,I,O)
    bn1.{weight,bias}                 -> bn1.{scale,bias}         (trained)
    bn1.{running_mean,running_var}    -> bn1.{mean,var}           (frozen, nnx.BatchStat)
    layerL.B.convK / bnK              -> layerL[B].convK / bnK
    layerL.B.downsample.0 / .1        -> layerL[B].downsample_conv / downsample_bn

``fc.*`` (the ImageNet classifier, which DomainBed discards) and ``*.num_batches_tracked`` are
ignored. Every other key must be present with torchvision's shape; one error names the first
missing, unexpected or mis-shaped key (and how many more there are). DomainBed
(``domainbed/networks.py``) adapts ``conv1`` to ``nc != 3`` input channels by copying
pretrained channel ``i % 3`` into channel ``i``; :func:`load_into` does the same.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from flax import nnx

IGNORED_PREFIXES = ("fc.",)
IGNORED_SUFFIXES = (".num_batches_tracked",)
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_MODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


class WeightsError(ValueError):
    """A pretrained-weights file that does not fit the network."""


def torch_name(path: tuple) -> str:
    """flax state path (e.g. ``('layer2', 0, 'downsample_bn', 'var')``) -> torchvision key."""
    *mods, leaf = path
    return ".".join([_MODULE.get(str(m), str(m)) for m in mods] + [_LEAF[leaf]])


def to_torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1))) if path[-1] == "kernel" else value


def from_torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    return np.transpose(value, (2, 3, 1, 0)) if path[-1] == "kernel" else value


def flat_variables(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    """``{path: Variable}`` of ``model``'s Params and BatchStats (abstract or concrete)."""
    state = nnx.state(model, nnx.Param, nnx.BatchStat)
    out = {}
    for sub in state:
        for path, var in nnx.to_flat_state(sub):
            out[tuple(path)] = var
    return out


def state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """``model``'s variables under torchvision's names and layouts (the inverse of :func:`load_into`)."""
    return {torch_name(p): to_torch_layout(p, np.asarray(v.get_value())) for p, v in flat_variables(model).items()}


def read_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``state_dict`` from ``.safetensors`` (``safetensors.numpy``) or ``.npz`` (``np.load``)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist (docs/dg.md: how to make one)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise WeightsError(f"cannot read pretrained weights {path}: {e}") from None
    raise WeightsError(f"pretrained weights {path}: expected a .safetensors or .npz file")


def check(model: nnx.Module, sd: dict[str, np.ndarray], source: str = "state_dict") -> dict[str, np.ndarray]:
    """The flax-layout arrays for ``model`` from ``sd``, keyed by torchvision name; raises
    :class:`WeightsError` naming the first missing / unexpected / mis-shaped key."""
    want = flat_variables(model)
    names = {torch_name(p): p for p in want}
    used = {k: v for k, v in sd.items()
            if not k.startswith(IGNORED_PREFIXES) and not k.endswith(IGNORED_SUFFIXES)}
    missing = [n for n in names if n not in used]
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                           + f"; is it a torchvision {type(model).__name__} state_dict of this depth?")
    extra = sorted(k for k in used if k not in names)
    if extra:
        raise WeightsError(f"{source}: unexpected key {extra[0]!r}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                           + " - a deeper/other ResNet's weights?")
    out = {}
    for name, path in names.items():
        value = np.asarray(used[name])
        expected = to_torch_layout(path, np.zeros(want[path].shape, np.int8)).shape
        if name == "conv1.weight" and value.ndim == 4 and value.shape[1] == 3 and expected[1] != 3 \
                and value.shape[0] == expected[0] and value.shape[2:] == expected[2:]:
            value = value[:, [i % 3 for i in range(expected[1])]]  # DomainBed's nc != 3 adaptation
        if value.shape != expected:
            raise WeightsError(f"{source}: key {name!r} has shape {tuple(value.shape)}, "
                               f"the network expects {tuple(expected)} (torchvision layout)")
        out[name] = from_torch_layout(path, value.astype(np.float32))
    return out


def load_into(model: nnx.Module, sd: dict[str, np.ndarray], source: str = "state_dict") -> None:
    """Overwrite ``model``'s Params and BatchStats (in place) with the checked ``sd``."""
    arrays = check(model, sd, source)
    for path, var in flat_variables(model).items():
        var.set_value(arrays[torch_name(path)])
