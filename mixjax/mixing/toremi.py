"""ToReMi: two-stage topic-level reweighting driven by per-topic learning patterns.

Zhu et al., "ToReMi: Topic-Aware Data Reweighting for Dynamic Pre-Training Data
Selection", arXiv 2504.00695. Reference code: ``zxx000728/ToReMi`` commit b9482a42,
``train/trainer.py``: ``compute_loss`` (a sample's loss weight is the mean weight of its
topics; ``loss = mean(l_i w_i)``), ``compute_metadata_loss`` (per-topic mean of the
per-sample losses over the window, their mean over the topics seen), ``adjust_weights``
(the rule below), ``update`` (adjust every ``steps_to_adjust_weight`` completed steps)
and ``evaluate`` (stage 1 from step 7000 on; a validation-loss criterion is commented
out). With the window's per-topic mean sample loss ``l_t`` and ``mu = mean_t l_t`` over
the topics seen in the window::

    stage 0 (early):  l_t > mu:  w_t <- min(w_t (1 + (l_t - mu) / mu), 5)      (else unchanged)
    stage 1 (late):   l_t > mu:  w_t <- max(w_t (1 - (l_t - mu) / mu), 0.1)
                      l_t <= mu: w_t <- min(w_t (1 + |l_t - mu| / mu), 5)

Weights start at 1. Early, hard (high-loss) topics are upweighted; late, topics still
above the mean are treated as noisy and downweighted while the well-learnt ones gain.

In mixjax a topic is a domain (every sequence has one; ``mixjax data regroup`` makes
topic clusters the domains). Our choices:

* The weights act on the loss (``apply_to = "loss"``): domain d's tokens get
  ``r_d = w_d / p_d`` with ``w`` the topic weights normalised to sum 1 (logged as the
  mixer's weights); with uniform sampling this is the reference's per-sample weight up to
  a common factor, which mixjax's self-normalised objective divides out (the reference's
  ``mean(l_i w_i)`` also rescales the step size by the mean weight).
* A topic absent from the window keeps its weight. (The reference gives it a window mean
  of 0, so stage 1 doubles its weight; stage 0 leaves it unchanged.)
* Adjustments happen at the start of step ``s`` when ``s % adjust_every == 0`` and
  ``s > 0``, from the window of steps ``s - adjust_every .. s - 1``, so the new weights
  first weight step ``s``, as in the reference; stage 1 from step ``switch_step`` on.
* The per-sample loss is the mean over its counted tokens (``sample_loss``; the reference
  divides the sum by the padded length).

Defaults are the reference's (adjust every 100 steps, bounds 0.1 and 5, switch at 7000);
size ``switch_step`` to the run (the tiny config switches at 70% of its steps).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mixjax.mixing import domain_stats
from mixjax.mixing.base import Mixer, init_state, record_weights, register


def adjust(w, loss_sum, count, stage1, min_weight: float = 0.1, max_weight: float = 5.0):
    """One ``adjust_weights`` of the module docstring (f32[K] topic weights)."""
    seen = count > 0
    avg = jnp.where(seen, loss_sum / jnp.maximum(count, 1.0), 0.0)
    n = jnp.sum(seen)
    mu = jnp.sum(avg) / jnp.maximum(n, 1)
    rel = (avg - mu) / jnp.where(mu != 0, mu, 1.0)
    early = jnp.where(rel > 0, jnp.minimum(w * (1.0 + rel), max_weight), w)
    late = jnp.where(rel > 0, jnp.maximum(w * (1.0 - rel), min_weight),
                     jnp.minimum(w * (1.0 + jnp.abs(rel)), max_weight))
    new = jnp.where(stage1, late, early)
    return jnp.where(seen & (n > 0) & (mu != 0), new, w)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ToReMi(Mixer):
    name = "toremi"
    requires = frozenset({"sample_loss", "domain_id"})
    default_apply_to = "loss"

    adjust_every: int = 100
    switch_step: int = 7000
    min_weight: float = 0.1
    max_weight: float = 5.0

    def __post_init__(self):
        super().__post_init__()
        if self.adjust_every < 1:
            raise ValueError(f"mixer 'toremi': adjust_every must be >= 1, got {self.adjust_every}")
        if self.switch_step < 0:
            raise ValueError(f"mixer 'toremi': switch_step must be >= 0, got {self.switch_step}")
        if not 0 < self.min_weight <= 1.0 <= self.max_weight:
            raise ValueError("mixer 'toremi': need 0 < min_weight <= 1 <= max_weight, got "
                             f"{self.min_weight}, {self.max_weight}")

    def init(self, num_domains):
        z = jnp.zeros((num_domains,), jnp.float32)
        return init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                          topic_weight=jnp.ones((num_domains,), jnp.float32),
                          loss_sum=z, seq_count=z)

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        due = (step % self.adjust_every == 0) & (step > 0)
        tw = jnp.where(due, adjust(state["topic_weight"], state["loss_sum"], state["seq_count"],
                                   step >= self.switch_step, self.min_weight, self.max_weight),
                       state["topic_weight"])
        loss_sum = jnp.where(due, 0.0, state["loss_sum"])
        seq_count = jnp.where(due, 0.0, state["seq_count"])
        s, n = domain_stats.domain_totals(stats["sample_loss"],
                                          jnp.ones_like(stats["sample_loss"]),
                                          stats["domain_id"], k)
        return record_weights(state, tw / jnp.sum(tw), topic_weight=tw,
                              loss_sum=loss_sum + s, seq_count=seq_count + n)
