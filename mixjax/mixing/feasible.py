"""Feasible Learning: a loss bound per example, primal-dual, each example weighted by its multiplier.

Ramirez, Hounie, Elenter, Gallego-Posada, Hashemizadeh, Ribeiro, Lacoste-Julien (AISTATS 2025,
arXiv 2501.14912), "Feasible Learning"; reference code ``juan43ramirez/feasible-learning`` at
commit 864a585: ``src/cmps/feasibility.py`` (one inequality constraint per training sample,
violation ``l_i - eps``, ``compute_excess_loss`` in ``src/cmps/base_cmp.py``; multipliers
initialised to 0, ``IndexedMultiplier`` indexed by the sample's position in the dataset),
``configs/task.py`` (``AlternatingDualPrimalOptimizer``: the dual step first, then the primal
step with the updated multipliers) and ``scripts/rfl_ablation/*.py`` (Resilient FL as weight
decay on the multipliers).

The problem: find theta with ``l_i(theta) <= eps`` for every example i (no objective). Its
Lagrangian ``sum_i lam_i (l_i - eps)``; Resilient FL relaxes each bound by a slack u_i >= 0
at cost ``(alpha/2) ||u||^2``, whose optimal slack is ``u_i = lam_i / alpha``. One step on a
batch of B sequences (l_b = the mean token loss of sequence b)::

    dual:    lam_b <- max(0, lam_b + eta (l_b - eps - lam_b / alpha))       (1/alpha = slack_decay;
                                                                             0: plain FL)
    primal:  theta <- optimiser step on  sum_b lam_b l_b / sum_b lam_b     (lam the updated values)

The step self-normalises the weighted loss (``mixjax.core.step``), so the primal direction is
the reference's ``sum_b lam_b grad l_b`` divided by ``sum_b lam_b`` (scale only; an Adam-type
optimiser is nearly invariant to it); a batch whose multipliers are all 0 gives a zero
gradient, as in the reference.

Per-example state: a packed LM batch carries no example index, so an example is identified by
the content of its token row: ``example_id`` (a statistic declared here) is a 32-bit hash of
the row (polynomial in the tokens, then murmur3's finaliser), and the multipliers live in a
table of ``table_size`` entries indexed by ``id mod table_size`` inside the mixer state, so
they are checkpointed and resumed with the run. Two rows that share a slot share a multiplier
(expected collisions: n^2 / (2 table_size) for n distinct rows). Duplicate slots in one batch
add their dual steps before the projection. When sequences never repeat (one pass over a
large corpus), every multiplier is used once: the rule becomes a hinge weighting
``lam_b = eta max(0, l_b - eps)`` of each batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing import base, statistics

Array = jax.Array
_PRIME = 0x01000193            # FNV prime: the multiplier of the polynomial hash


def _powers(n: int) -> np.ndarray:
    """uint32 ``P^(n-1-t)`` (mod 2^32), t = 0..n-1."""
    out = np.empty(n, np.uint64)
    acc = 1
    for t in range(n - 1, -1, -1):
        out[t] = acc
        acc = (acc * _PRIME) % (1 << 32)
    return out.astype(np.uint32)


def example_hash(tokens: Array) -> Array:
    """u32[B]: a hash of each token row, ``fmix32(sum_t (x_t + 1) P^(S-t) mod 2^32)``."""
    x = jnp.asarray(tokens).astype(jnp.uint32) + jnp.uint32(1)
    h = jnp.sum(x * jnp.asarray(_powers(x.shape[-1])), axis=-1, dtype=jnp.uint32)
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


statistics.declare(
    "example_id", shape="u32[B]", attribution="none",
    doc="32-bit content hash of each sequence's token row (mixjax.mixing.feasible.example_hash): "
        "a stable example identity for per-example state",
    compute=lambda ctx: example_hash(ctx.tokens))


def dual_step(lam: Array, slots: Array, loss: Array, *, eps: float, dual_lr: float,
              slack_decay: float) -> Array:
    """The multiplier table after one projected dual-ascent step on the batch's examples."""
    old = lam[slots]
    delta = dual_lr * (loss - eps - slack_decay * old)
    return jnp.maximum(lam.at[slots].add(delta), 0.0)


@base.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class FeasibleLearning(base.Mixer):
    """Per-example loss bounds ``l_b <= eps`` by primal-dual (see the module docstring).

    Hyperparameters: ``eps`` (the bound on a sequence's mean token loss, nats), ``dual_lr``
    (eta), ``slack_decay`` (1/alpha of Resilient FL; 0 = hard constraints), ``table_size``
    (multiplier slots), ``init_multiplier`` (the reference's 0). Domain weights stay
    uniform; the per-sequence weights are the multipliers.
    """

    name = "feasible"
    requires = frozenset({"sample_loss", "token_mask", "example_id"})
    default_apply_to = "sampling"
    example_weighting = True
    eps: float = 2.0
    dual_lr: float = 1.0
    slack_decay: float = 0.0
    table_size: int = 1 << 16
    init_multiplier: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        where = f"mixer {self.name!r}"
        for key in ("eps", "dual_lr", "slack_decay", "init_multiplier"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{where}: {key} must be finite and >= 0, got {v!r}")
        if self.dual_lr <= 0:
            raise ValueError(f"{where}: dual_lr must be > 0, got {self.dual_lr}")
        if not (isinstance(self.table_size, int) and self.table_size >= 1):
            raise ValueError(f"{where}: table_size must be an int >= 1, got {self.table_size!r}")

    def init(self, num_domains: int) -> base.State:
        return base.init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                               multipliers=jnp.full((self.table_size,),
                                                    float(self.init_multiplier), jnp.float32))

    def update(self, state: base.State, stats: Mapping[str, Any], step: Array) -> base.State:
        slots = self.slots(stats)
        valid = jnp.sum(stats["token_mask"], axis=1) > 0
        loss = jnp.asarray(stats["sample_loss"], jnp.float32)
        # an all-pad row has no loss to bound: its step is 0
        lam = state["multipliers"]
        delta_loss = jnp.where(valid, loss, self.eps + self.slack_decay * lam[slots])
        new = dual_step(lam, slots, delta_loss, eps=self.eps, dual_lr=self.dual_lr,
                        slack_decay=self.slack_decay)
        return {**state, "multipliers": new}

    def slots(self, stats: Mapping[str, Any]) -> Array:
        return (jnp.asarray(stats["example_id"]) % jnp.uint32(self.table_size)).astype(jnp.int32)

    def example_weights(self, state: base.State, stats: Mapping[str, Any]) -> Array:
        return state["multipliers"][self.slots(stats)]

