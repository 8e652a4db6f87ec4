"""DGA: dynamic gradient alignment for online data mixing.

Fan, Grangier, Ablin, "Dynamic Gradient Alignment for Online Data Mixing",
arXiv 2410.02498. **No reference code is public**; this follows the paper's
equations (mixing-algorithms.md section 6), and the choices below are ours.

Bilevel view: ``min_alpha L_spe(theta*(alpha))`` with
``theta*(alpha) = argmin sum_i alpha_i L_i``. A one-step look-ahead gives
``dL_spe/dalpha_i ~ -eta_theta <grad L_i, grad L_spe>``, hence the
exponentiated-gradient step, every ``update_every`` (T_r) steps::

    a_i <- a_i * exp(eta * <g_i, g_spe>) / Z        (raw weights a, state["alpha"])
    w   <- ema * w + (1 - ema) * a                  (sampling weights, state["weights"])
    w   <- (1 - eps) * w + eps / K

``g_spe`` is the gradient of the *specific* (target) set's loss on a target
batch the loop supplies (``batch["target_tokens"]``); ``<g_i, g_spe>`` comes
from ``mixjax.mixing.grads`` (``grad_dot``; the ``jvp`` strategy supplies it for any
batch composition at O(1) x params extra memory). The weights act on
sampling.

Choices (the paper leaves them open or we could not confirm them):
* the score is the raw inner product, not a cosine (as the look-ahead
  derivation gives); ``eta`` absorbs the model learning rate ``eta_theta``;
  ``scale_by_lr=True`` multiplies the score by the current lr instead.
* EMA on the sampling weights, the raw weights keep the exponentiated update
  (the paper uses an EMA of alpha in token-limited regimes); ``ema=0`` turns it off.
* ``eta``, ``update_every``, ``ema`` defaults (1.0, 1, 0.5) are ours; the
  paper's values are unknown. ``start_step`` (default 0) holds the weights
  fixed for the first steps: at initialisation every domain's gradient points
  along the shared "learn the byte/unigram statistics" direction, and large
  raw inner products there say little about the target (measured on
  mixpile-tiny, docs/gradients.md); ODM and ADO wait in the same way. A domain absent from the batch has
  ``<g_i, g_spe> = 0`` and keeps its relative weight.
* DIDS' re-implementation flips the sign and drops the prior alpha; we follow
  the paper.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, init_state, record_weights, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class DGA(Mixer):
    name = "dga"
    default_apply_to = "sampling"

    eta: float = 1.0
    update_every: int = 1
    ema: float = 0.5
    eps: float = 0.0
    scale_by_lr: bool = False
    start_step: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.eta > 0:
            raise ValueError(f"mixer 'dga': eta must be > 0, got {self.eta}")
        if self.update_every < 1:
            raise ValueError(f"mixer 'dga': update_every must be >= 1, got {self.update_every}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"mixer 'dga': ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"mixer 'dga': eps must be in [0, 1], got {self.eps}")
        if self.start_step < 0:
            raise ValueError(f"mixer 'dga': start_step must be >= 0, got {self.start_step}")

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"grad_dot", "lr"} if self.scale_by_lr else {"grad_dot"})

    def init(self, num_domains: int):
        w = jnp.full((num_domains,), 1.0 / num_domains, jnp.float32)
        return init_state(w, alpha=w)

    def update(self, state, stats, step):
        score = stats["grad_dot"] * (stats["lr"] if self.scale_by_lr else 1.0)
        alpha = jax.nn.softmax(jnp.log(state["alpha"]) + self.eta * score)
        w = self.ema * state["weights"] + (1.0 - self.ema) * alpha
        w = (1.0 - self.eps) * w + self.eps / w.shape[0]
        due = ((step % self.update_every) == 0) & (step >= self.start_step)
        new = record_weights(state, w, alpha=alpha)
        # Off-schedule steps keep the weights but still count in the running mean.
        return jax.tree.map(lambda n, o: jnp.where(due, n, o), new,
                            record_weights(state, state["weights"]))
