"""R&B: regroup and balance, the gradient-Gram balancing step.

Ge et al., "R&B: Domain Regrouping and Data Mixture Balancing for Efficient
Foundation Model Training", arXiv 2505.00358. **No reference code is
public**; the rule below is the one summarised in mixing-algorithms.md
section 15 (unverified against the paper's code). The regrouping half
(k-means over embeddings) is a data-side step and not part of this mixer.

With the Gram matrix of the per-domain gradients ``G_ij = <g_i, g_j>``
(``mixjax.mixing.grads``), every ``update_every`` steps::

    v  = G p / ||G p||_2
    p <- softmax(lambda * v)
    p <- (1 - eps) * p + eps / K

A domain whose gradient agrees with the current mixture's overall gradient
``sum_j p_j g_j`` is upweighted. The weights act on sampling.

Our choices: ``lambda`` = 1.0 (the softmax argument then lies in
``[-lambda, lambda]``, so weights stay within a factor ``e^(2 lambda)`` of
each other), ``update_every`` = 1, no EMA, ``G`` from the per-domain *mean
token loss* gradients of the current batch. A domain absent from the batch has
a zero row and column in ``G``; we keep its previous weight share instead of
letting its score fall to 0. Since the weights change the batch composition,
use ``grads.layout='rows'`` (any composition) or a stratified sampler with
``apply_to='loss'``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, record_weights, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class RnB(Mixer):
    name = "rnb"
    requires = frozenset({"gram", "count"})
    default_apply_to = "sampling"

    lam: float = 1.0
    update_every: int = 1
    eps: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.lam > 0:
            raise ValueError(f"mixer 'rnb': lam must be > 0, got {self.lam}")
        if self.update_every < 1:
            raise ValueError(f"mixer 'rnb': update_every must be >= 1, got {self.update_every}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"mixer 'rnb': eps must be in [0, 1], got {self.eps}")

    def update(self, state, stats, step):
        p = state["weights"]
        present = stats["count"] > 0
        gp = stats["gram"] @ p
        v = gp / (jnp.linalg.norm(gp) + 1e-12)
        q = jax.nn.softmax(jnp.where(present, self.lam * v, -jnp.inf))
        # Absent domains keep their weight; present ones share the rest by q.
        mass = jnp.sum(jnp.where(present, p, 0.0))
        new = jnp.where(present, q * mass, p)
        new = jnp.where(present.any(), new, p)
        new = (1.0 - self.eps) * new + self.eps / new.shape[0]
        due = (step % self.update_every) == 0
        return record_weights(state, jnp.where(due, new, p))
