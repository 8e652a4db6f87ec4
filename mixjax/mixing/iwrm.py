"""IWRM: instance-wise risk minimisation by Jacobian descent, UPGrad over the batch's sequences.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (arXiv 2406.16232), section 5
(IWRM: every training example's loss is its own objective; stochastic sub-Jacobian descent takes
the rows of a mini-batch) with the UPGrad aggregator (Prop. 1; torchjd ``_upgrad.py``, the rule
``mixjax.mixing.aggregators.upgrad_weights`` implements over domains). Here the rows are the B
sequences' gradients ``g_b = grad L_b`` (L_b the mean token loss of sequence b), through their
B x B Gram ``E = [<g_a, g_b>]`` (the ``example_gram`` statistic of the gradient engine)::

    E <- E / tr(E) (+ reg_eps I)                                       (torchjd's normalisation)
    v^(b) = argmin_v v^T E v  s.t.  v >= e_b / B_valid                  (one box QP per row)
    c = sum_b v^(b);   model gradient = sum_b c_b g_b                  (engine's combine_examples)

so no sequence's loss increases to first order. Rows without a counted token (all padding)
have g_b = 0; they are left out (c_b = 0) as absent domains are in ``upgrad``. With one sequence
per domain the rule is exactly ``upgrad`` over the domains (tests/test_mixing_iwrm.py).

The logged domain weights are each domain's share of c (``sum_{b in d} c_b / sum c``);
``apply_to`` is "loss", so the sampler keeps its weights. Cost: the per-example gradients
(memory B x parameters on the ``vmap`` engine; ``chunked`` bounds it) and B small QPs.

docs/extending_example_examples.py is the worked example this rule grew from; it registers
its own ``upgrad_examples`` (the same rule without the padding mask and hyperparameters).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mixjax.mixing import aggregators, base

Array = jax.Array


@base.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class IWRM(base.Mixer):
    """UPGrad over the per-sequence Jacobian (see the module docstring)."""

    name = "iwrm"
    requires = frozenset({"example_gram", "token_mask", "domain_id"})
    model_gradient = "example_coeffs"
    default_apply_to = "loss"
    norm_eps: float = 1e-4
    reg_eps: float = 1e-4
    qp_iters: int | None = None

    def __post_init__(self):
        super().__post_init__()
        aggregators.check_upgrad_eps(self.name, self.norm_eps, self.reg_eps)
        if self.qp_iters is not None and self.qp_iters < 1:
            raise ValueError(f"mixer {self.name!r}: qp_iters must be >= 1, got {self.qp_iters}")

    def example_coeffs(self, stats: Mapping[str, Any]) -> Array:
        """c f32[B] (0 for all-pad rows)."""
        gram = jnp.asarray(stats["example_gram"], jnp.float32)
        present = jnp.sum(stats["token_mask"], axis=1) > 0
        pref = present / jnp.maximum(jnp.sum(present), 1)
        return aggregators.upgrad_weights(gram, pref.astype(jnp.float32), self.norm_eps,
                                          self.reg_eps, self.qp_iters, present)

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        c = self.example_coeffs(stats)
        share = jax.ops.segment_sum(c, stats["domain_id"], num_segments=k)
        total = jnp.sum(share)
        w = jnp.where(total > 0, share / jnp.where(total > 0, total, 1.0), state["weights"])
        return base.record_weights(state, w.astype(jnp.float32))

    def gradient_coeffs(self, state, stats) -> Array:
        del state
        return self.example_coeffs(stats)
