"""DoGE: domain reweighting with generalization estimation.

Fan, Pagliardini, Jaggi, "DoGE: Domain Reweighting with Generalization
Estimation", ICML 2024, arXiv 2310.15393. Follows the reference code
(``Olivia-fsm/DoGE: src/trainer.py``, ``update_domain_weights_distributed``).

Every step, with per-domain gradients ``g_i`` (each norm-clipped to
``max_grad_norm``, as the reference clips each domain's backward):

* ``universal`` (target = the training domains themselves; the reference's
  ``train_ids == tgt_ids`` branch drops the self term)::

      W_i = sum_j <g_i, g_j> - <g_i, g_i>          (from the Gram matrix)

* ``ood`` (target = held-out domains' batches, one gradient ``g_t`` per target
  domain t = 1..T, each clipped separately, then summed over the targets)::

      W_i = sum_t <g_i, g_t>                        (from grad_dot, [K] or [K, T])

  (the reference's ``scores_mat = train_mat @ tgt_mat.T`` whose rows are the
  separately clipped domain gradients, then ``scores_mat.sum(dim=-1)``;
  ``grads.target = ["a", "b"]`` gives T = 2. A single target is T = 1.)

then the learning-rate-scaled, clipped score and a mirror-descent step::

      s_i = clip(lr_t * W_i / (mean_i ||g_i|| + 1e-6), lr_t * dw_min, lr_t * dw_max)
      alpha = softmax(log alpha_prev + s / mu)
      alpha = (1 - eps) * alpha + eps / K

The model update uses the reweighted gradient ``sum_i alpha_i g_i`` with the
*new* alpha (:meth:`DoGE.gradient_coeffs`, consumed by the train step through
``mixjax.mixing.grads``). Output: the time-averaged alpha, the mean of alpha_1..alpha_T
(the reference's ``avg_dw`` running sum and its count start at 0 and add each
updated alpha, so the initial alpha_0 is not in the mean:
``average_includes_initial = False``).

Defaults are the reference's argument defaults (mu 0.05, dw_max 5, dw_min 0,
eps 0); its shipped universal config uses mu 0.01, ``max_grad_norm`` 5.

Deviations, and why:
* a domain absent from the batch gets score 0 and is left out of the mean
  norm (the reference reuses that domain's stale gradient row);
* the mean norm is of the clipped gradients, as in the reference (its
  ``flat_grad_mat`` rows hold clipped gradients).
* the reference's shipped universal run draws a separate ``mix`` stream as
  target; that variant is ``target="ood"`` with the loop's target batch drawn
  from the training mixture.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, record_weights, register

TARGETS = ("universal", "ood")


def clip_scale(norm: jax.Array, max_norm: float) -> jax.Array:
    """Factor that clips a gradient of norm ``norm`` to ``max_norm`` (1 when max_norm <= 0)."""
    if max_norm <= 0:
        return jnp.ones_like(norm)
    return jnp.minimum(1.0, max_norm / (norm + 1e-6))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class DoGE(Mixer):
    name = "doge"
    default_apply_to = "loss"   # sampling stays at the reference weights; alpha acts on gradients
    average_includes_initial = False
    multi_target = True     # grads.target may name several domains (target="ood")
    model_gradient = "coeffs"   # sum_i alpha_i clip(g_i), from the gradient engine

    target: str = "universal"
    mu: float = 0.05
    dw_min: float = 0.0
    dw_max: float = 5.0
    eps: float = 0.0
    max_grad_norm: float = 5.0

    def __post_init__(self):
        super().__post_init__()
        if self.target not in TARGETS:
            raise ValueError(f"mixer 'doge': target must be one of {TARGETS}, got {self.target!r}")
        if not self.mu > 0:
            raise ValueError(f"mixer 'doge': mu must be > 0, got {self.mu}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"mixer 'doge': eps must be in [0, 1], got {self.eps}")
        if self.dw_min > self.dw_max:
            raise ValueError(f"mixer 'doge': dw_min {self.dw_min} > dw_max {self.dw_max}")

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        if self.target == "universal":
            return frozenset({"gram", "count", "lr"})
        return frozenset({"grad_dot", "grad_norm", "target_grad_norm", "count", "lr"})

    def _clipped(self, stats: Mapping[str, jax.Array]):
        """(W f32[K], clip scales f32[K], clipped norms f32[K])."""
        if self.target == "universal":
            gram = stats["gram"]
            norm = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
            sc = clip_scale(norm, self.max_grad_norm)
            gc = gram * sc[:, None] * sc[None, :]
            w = gc.sum(axis=1) - jnp.diagonal(gc)
        else:
            norm = stats["grad_norm"]
            sc = clip_scale(norm, self.max_grad_norm)
            st = clip_scale(stats["target_grad_norm"], self.max_grad_norm)
            if stats["grad_dot"].ndim == 2:   # several targets: clip each g_t, then sum over t
                w = sc * (stats["grad_dot"] * st[None, :]).sum(axis=1)
            else:
                w = sc * st * stats["grad_dot"]
        return w, sc, sc * norm

    def scores(self, stats: Mapping[str, jax.Array]) -> jax.Array:
        """The lr-scaled, clipped score s (f32[K]); 0 for domains absent from the batch."""
        w, _, cnorm = self._clipped(stats)
        present = stats["count"] > 0
        lr = stats["lr"]
        avg_norm = jnp.sum(jnp.where(present, cnorm, 0.0)) / jnp.maximum(present.sum(), 1)
        s = jnp.clip(lr * w / (avg_norm + 1e-6), lr * self.dw_min, lr * self.dw_max)
        return jnp.where(present, s, 0.0)

    def update(self, state, stats, step):
        del step
        s = self.scores(stats)
        alpha = jax.nn.softmax(jnp.log(state["weights"]) + s / self.mu)
        alpha = (1.0 - self.eps) * alpha + self.eps / alpha.shape[0]
        return record_weights(state, alpha)

    def gradient_coeffs(self, state, stats) -> jax.Array:
        """c_i = alpha_i * clip_i: the model gradient is sum_i c_i g_i (new alpha)."""
        _, sc, _ = self._clipped(stats)
        return state["weights"] * sc
