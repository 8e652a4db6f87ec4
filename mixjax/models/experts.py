"""What the expert models (``model.kind=moe``, ``model.kind=demix``) share: the config of
"an expert FFN every ``moe_every``-th block" and the safetensors naming of stacked experts.

Both kinds replace the MLP of every ``moe_every``-th block (layers ``i`` with
``(i + 1) % moe_every == 0``) by ``num_experts`` SwiGLU experts stored as stacked weights
``w_gate, w_up [E, d, f]``, ``w_down [E, f, d]`` (``f = expert_d_ff`` or the dense MLP's
hidden size). :class:`ExpertLayersConfig` holds those knobs and their checks (the error
messages name the kind); :func:`expert_tensors` / :func:`read_experts` write and read one
block's stack under Mixtral's per-expert names (``transformers``' ``modeling_mixtral.py``:
``w1`` gate, ``w3`` up, ``w2`` down, torch ``[out, in]`` layout)::

    w_gate[e]  [d, f]     {prefix}experts.{e}.w1.weight   [f, d]
    w_up[e]    [d, f]     {prefix}experts.{e}.w3.weight   [f, d]
    w_down[e]  [f, d]     {prefix}experts.{e}.w2.weight   [d, f]

The prefixes: ``model.layers.{i}.block_sparse_moe.`` (moe, with its router as
``gate.weight``; :func:`mixjax.models.moe.to_mixtral`) and ``model.layers.{i}.demix.``
(demix, no router; :func:`mixjax.models.demix.to_hf`). Everything else is the Llama naming
of :mod:`mixjax.models.hf_io`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, ClassVar

import numpy as np

from mixjax.models import transformer as T

_NAMES = (("w1", "w_gate"), ("w3", "w_up"), ("w2", "w_down"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertLayersConfig(T.TransformerConfig):
    """The transformer's config plus the expert-layer knobs both expert kinds have."""

    KIND: ClassVar[str] = "experts"
    NUM_EXPERTS_NOTE: ClassVar[str] = ""

    num_experts: int = 4
    moe_every: int = 1            # every n-th block has experts (1: all)
    expert_d_ff: int | None = None   # per-expert hidden size (None: the dense ff_dim)

    def __post_init__(self):
        super().__post_init__()
        h = "model.hparams."
        if not (isinstance(self.num_experts, int) and self.num_experts >= 1):
            raise ValueError(f"{h}num_experts must be an integer >= 1{self.NUM_EXPERTS_NOTE}, "
                             f"got {self.num_experts!r}")
        if not (isinstance(self.moe_every, int) and 1 <= self.moe_every <= self.num_layers):
            raise ValueError(f"{h}moe_every must be an integer in [1, model.num_layers="
                             f"{self.num_layers}], got {self.moe_every!r}")
        if self.mlp != "swiglu":
            raise ValueError(f"model.mlp: the {self.KIND} experts are SwiGLU; "
                             "set model.mlp='swiglu'")
        if self.scan_layers:
            raise ValueError(f"model.scan_layers: not supported by model.kind={self.KIND!r}")

    @property
    def expert_ff(self) -> int:
        return self.expert_d_ff or self.ff_dim

    def has_experts(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) holds experts instead of the dense MLP."""
        return (layer + 1) % self.moe_every == 0


def expert_tensors(stack: dict, prefix: str, num_experts: int) -> dict[str, np.ndarray]:
    """``{name: array}`` of one block's stacked experts (module docstring)."""
    out = {}
    for e in range(num_experts):
        for name, key in _NAMES:
            out[f"{prefix}experts.{e}.{name}.weight"] = np.ascontiguousarray(
                np.asarray(stack[key][e]).T)
    return out


def read_experts(tensors: dict, get: Callable[[str, tuple], np.ndarray], prefix: str,
                 cfg: ExpertLayersConfig, where: str) -> dict[str, np.ndarray]:
    """The stacked ``w_gate, w_up, w_down`` of one block from its per-expert tensors, read
    with ``get(name, shape)`` (which names a missing or misshapen tensor); a file with
    another number of experts is one error naming the tensors and both counts."""
    from mixjax.models.hf_io import ExportError
    d, f = cfg.d_model, cfg.expert_ff
    pat = re.compile(re.escape(prefix) + r"experts\.(\d+)\.w1\.weight$")
    have = {int(m.group(1)) for k in tensors if (m := pat.match(k))}
    if have and len(have) != cfg.num_experts:
        raise ExportError(f"{where}: {prefix}experts.*: the file has {len(have)} experts, "
                          f"model.hparams.num_experts={cfg.num_experts}")
    shapes = {"w_gate": (f, d), "w_up": (f, d), "w_down": (d, f)}
    return {key: np.stack([get(f"{prefix}experts.{e}.{name}.weight", shapes[key]).T
                           for e in range(cfg.num_experts)])
            for name, key in _NAMES}
