"""GroupDRO: exponentiated-gradient ascent on per-domain losses.

Sagawa, Koh, Hashimoto, Liang. "Distributionally Robust Neural Networks for
Group Shifts" (ICLR 2020, arXiv 1911.08731); reference code
``kohpangwei/group_DRO: loss.py`` (LossComputer, commit cbbc1c5).

Every step, with L_g the mean token loss of domain g in the batch (0 when the
domain is absent, so an absent domain is not boosted), C >= 0 the
generalisation adjustment and n_g the domain's size::

    a_g   = L_g + C / sqrt(n_g)            (the C term only when C > 0)
    q_g  <- q_g * exp(eta * a_g) / sum_h q_h * exp(eta * a_h)

The training objective is sum_g q_g L_g, so the default ``apply_to`` is
``loss``. ``average`` is the running mean of q (q_0 included).

Defaults are the reference's: ``step_size`` eta = 0.01 (``--robust_step_size``),
``generalization_adjustment`` C = 0, q_0 = 1/G.

Deviations: n_g is the domain's token count as given by the trainer
(``token_counts``); the reference uses its training-set example count, so C
needs rescaling between the two. The update runs in log space (log q +=
eta * a, then log-softmax) to stay finite for huge losses; one step's change of
log q is capped at 1e4, which leaves every realistic update unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register
from mixjax.mixing.domain_stats import LOGIT_STEP_CAP


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupDRO(Mixer):
    name = "groupdro"
    requires = frozenset({"loss", "count"})
    default_apply_to = "loss"

    step_size: float = 0.01
    generalization_adjustment: float = 0.0
    token_counts: tuple[float, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if not self.step_size >= 0:
            raise ValueError(f"mixer 'groupdro': step_size must be >= 0, got {self.step_size}")
        if not self.generalization_adjustment >= 0:
            raise ValueError("mixer 'groupdro': generalization_adjustment must be >= 0, "
                             f"got {self.generalization_adjustment}")

    def _adjustment(self, k: int) -> np.ndarray:
        if self.generalization_adjustment == 0:
            return np.zeros(k, np.float32)
        if self.token_counts is None or len(self.token_counts) != k:
            raise ValueError(f"mixer 'groupdro': generalization_adjustment > 0 needs the {k} "
                             "domains' token_counts")
        n = np.asarray(self.token_counts, np.float64)
        if np.any(~np.isfinite(n)) or np.any(n <= 0):
            raise ValueError(f"mixer 'groupdro': token_counts must be finite and > 0, got {n}")
        return (self.generalization_adjustment / np.sqrt(n)).astype(np.float32)

    def init(self, num_domains: int):
        self._adjustment(num_domains)  # validate before anything runs
        w = jnp.full((num_domains,), 1.0 / num_domains, jnp.float32)
        return init_state(w, log_weights=jnp.log(w))

    def update(self, state, stats, step):
        del step
        k = state["weights"].shape[0]
        present = stats["count"] > 0
        loss = jnp.where(present, stats["loss"], 0.0)
        adjusted = loss + jnp.asarray(self._adjustment(k))
        delta = jnp.clip(self.step_size * adjusted, -LOGIT_STEP_CAP, LOGIT_STEP_CAP)
        log_w = jax.nn.log_softmax(state["log_weights"] + delta)
        return record_weights(state, jnp.exp(log_w), log_weights=log_w)
