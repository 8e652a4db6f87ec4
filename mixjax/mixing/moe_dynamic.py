"""Dynamic data mixing for mixture-of-experts models, from the experts' routing preferences.

Zhu, Dong, Qu, Ruan, Chen, Cheng. "Dynamic Data Mixing Maximizes Instruction Tuning for
Mixture-of-Experts" (NAACL 2025, arXiv 2406.11256); reference code ``Spico197/MoE-SFT``,
``src/callbacks.py`` (``AdaptiveSamplingCallback._sim`` / ``_update_weights``, commit
5b67e28). Runs on ``model.kind=moe`` only (it reads the ``expert_routing`` statistic).

Every ``update_every`` steps, with ``n_d`` the tokens each expert of each MoE block kept
from domain d's sequences in the batch (``expert_routing``, flattened over blocks and
experts) and P the domains present in the batch::

    r_d      = n_d / sum(n_d)                         the domain's routing representation
    cos:  s_dj = <r_d, r_j> / (|r_d| |r_j|),  delta_d = 1 - agg_{j in P} s_dj
    l2:   delta_d = agg_{j in P} |r_d - r_j|          (agg = mean | min | max, "criterion")
    a_P      = softmax_{d in P}(log w_d + eta delta_d)   (the redundant domains lose weight)
    w'_d     = W_P a_d for d in P, w_d otherwise     (W_P = sum_{d in P} w_d)
    w''      = (1 - c) w' + c / K,  renormalised      (smoothing)

Between updates the weights stay as they are. Defaults are the reference's: ``eta`` = 10,
``c`` = 0.05, cosine similarity, ``criterion`` = mean (the mean includes s_dd = 1).

Deviations (stated): the reference measures each dataset's gate load on its evaluation
split at every evaluation; here the load is the training batch's at the update step (the
mixer sees the step's statistics only). A domain absent from that batch has no
representation: it is left out of the similarities and keeps its weight (the reference
always has every dataset). The reference's softmax runs over all datasets.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, init_state, record_weights, register

SIMILARITIES = ("cos", "l2")
CRITERIA = ("mean", "min", "max")


def redundancy_delta(load, present, similarity: str = "cos", criterion: str = "mean"):
    """``delta`` f32[K] of the module docstring from ``load`` f32[K, R] and ``present``
    bool[K] (0 for absent domains)."""
    rep = load / jnp.maximum(jnp.sum(load, axis=1, keepdims=True), 1e-30)
    if similarity == "cos":
        unit = rep / jnp.maximum(jnp.linalg.norm(rep, axis=1, keepdims=True), 1e-30)
        pair = unit @ unit.T
    else:
        diff = rep[:, None, :] - rep[None, :, :]
        pair = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    col = present[None, :]
    if criterion == "mean":
        agg = jnp.sum(jnp.where(col, pair, 0.0), 1) / jnp.maximum(jnp.sum(present), 1)
    elif criterion == "min":
        agg = jnp.min(jnp.where(col, pair, jnp.inf), axis=1)
    else:
        agg = jnp.max(jnp.where(col, pair, -jnp.inf), axis=1)
    delta = 1.0 - agg if similarity == "cos" else agg
    return jnp.where(present, delta, 0.0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class MoEDynamic(Mixer):
    name = "moe_dynamic"
    requires = frozenset({"expert_routing", "count"})
    default_apply_to = "sampling"

    eta: float = 10.0
    smoothing: float = 0.05
    update_every: int = 50
    similarity: str = "cos"
    criterion: str = "mean"

    def __post_init__(self):
        super().__post_init__()
        who = "mixer 'moe_dynamic'"
        if not self.eta >= 0:
            raise ValueError(f"{who}: eta must be >= 0, got {self.eta}")
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"{who}: smoothing must be in [0, 1], got {self.smoothing}")
        if not (isinstance(self.update_every, int) and self.update_every >= 1):
            raise ValueError(f"{who}: update_every must be an integer >= 1, "
                             f"got {self.update_every!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"{who}: similarity must be one of {SIMILARITIES}, "
                             f"got {self.similarity!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"{who}: criterion must be one of {CRITERIA}, "
                             f"got {self.criterion!r}")

    def init(self, num_domains: int):
        return init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32))

    def update(self, state, stats, step):
        w = state["weights"]
        k = w.shape[0]
        load = stats["expert_routing"].reshape(k, -1).astype(jnp.float32)
        present = jnp.sum(load, axis=1) > 0
        delta = redundancy_delta(load, present, self.similarity, self.criterion)
        logits = jnp.where(present, jnp.log(jnp.maximum(w, 1e-30)) + self.eta * delta, -jnp.inf)
        mass = jnp.sum(jnp.where(present, w, 0.0))
        a = jax.nn.softmax(jnp.where(jnp.any(present), logits, 0.0))
        moved = jnp.where(present, mass * a, w)
        smoothed = (1.0 - self.smoothing) * moved + self.smoothing / k
        new = smoothed / jnp.sum(smoothed)
        due = (step + 1) % self.update_every == 0
        return record_weights(state, jnp.where(due & jnp.any(present), new, w))
