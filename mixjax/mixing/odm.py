"""ODM: online data mixing as a multi-armed bandit over domains.

Albalak, Pan, Raffel, Wang. "Efficient Online Data Mixing For Language Model
Pre-Training" (arXiv 2312.02406); reference code
``alon-albalak/online-data-mixing: megatron/data/data_sampling_utils.py``
(``Exp3WeightUpdater``, ``UpdateScheduler``) and ``megatron/training.py``
(mixed-minibatch loop), commit edbfdad. Acts on sampling.

``odm`` (EXP3, the method of the paper's scripts). With K domains, pi the
probabilities the batch was drawn with, L_i the batch's mean token loss of
domain i and t the 1-based iteration (the reference's ``iteration``; step t
trains on the t-th batch, so the train step's 0-based ``step`` is t - 1)::

    R_i   <- R_i + (L_i / 10) / q_i            for every domain i present in the batch
    eps_t  = min(1/K, sqrt(ln K / (K t)))
    w_j    = (1 - K eps_t) * softmax(eps_{t-1} * R)_j + eps_t,   pi = w / sum w

Updates run when t > ``warmup_steps`` and t % ``update_every`` == 0; before
the warm-up the initial weights are kept and no reward accumulates (as the
reference's ``UpdateScheduler`` without internal updates). eps_{t-1} starts
at 1/K.

q_i is the probability that domain i appears in the batch. The reference
draws one domain per batch, so q_i = pi_i (the classic EXP3 importance
weight). mixjax batches draw each of D sequences independently from pi, so the
unbiased estimate uses q_i = 1 - (1 - pi_i)^D, which is pi_i when D = 1.
``draws_per_batch`` sets D (0: the number of sequences in the batch; 1: the
reference's one-domain-per-batch sampling). The formula assumes i.i.d. draws
(``data.sampler = "multinomial"``); the stratified sampler makes presence
nearly certain, so use multinomial sampling with ODM.

``odm_smoothed`` (the README's SmoothedMean variant with the reference's
mixed-minibatch ``group_update``, which is linear rather than a softmax)::

    R_i <- beta * R_i + (1 - beta) * exp(L_i)   for present domains, beta = 0.9
    w_j  = (1 - K eps_t) * R_j / sum_k R_k + eps_t

Defaults are the reference scripts': ``warmup_steps`` 2000, ``update_every``
1, reward = loss / 10 (``reward_scale`` 0.1), smoothing 0.9. The initial
weights are the natural (token-count) mixture when ``token_counts`` is given
(the scripts start from the Pile's original weights), else uniform.

Robustness deviations: q_i is floored at 1e-6 and each reward increment capped
at 1e30 (EXP3 keeps pi >= eps_t, so neither binds in a normal run); exp(L) in
the smoothed variant uses min(L, 80) (e^80 ~ 5.5e34; no LM loss is 80 nats).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register
from mixjax.mixing.domain_stats import VALUE_CAP


def _prior(token_counts, k: int, name: str) -> np.ndarray:
    if token_counts is None:
        return np.full(k, 1.0 / k)
    n = np.asarray(token_counts, np.float64)
    if n.shape != (k,) or np.any(~np.isfinite(n)) or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"mixer {name!r}: token_counts must be {k} finite values >= 0, "
                         f"not all 0; got {token_counts}")
    return n / n.sum()


def exploration_rate(k: int, step) -> jax.Array:
    """eps_t = min(1/K, sqrt(ln K / (K t))) (t >= 1)."""
    t = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    return jnp.minimum(1.0 / k, jnp.sqrt(math.log(k) / (k * t)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Bandit(Mixer):
    """Shared schedule of the ODM variants: warm-up, update frequency, eps_t mixing."""

    default_apply_to = "sampling"

    warmup_steps: int = 2000
    update_every: int = 1
    token_counts: tuple[float, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.warmup_steps < 0 or self.update_every < 1:
            raise ValueError(f"mixer {self.name!r}: need warmup_steps >= 0 and "
                             f"update_every >= 1; got {self.warmup_steps}, {self.update_every}")

    def init(self, num_domains: int):
        w = jnp.asarray(_prior(self.token_counts, num_domains, self.name), jnp.float32)
        return init_state(w, reward=jnp.zeros((num_domains,), jnp.float32),
                          eps=jnp.full((), 1.0 / num_domains, jnp.float32))

    def _accumulate(self, state, stats, present):  # -> new reward estimate R
        raise NotImplementedError

    def _mix(self, reward, prev_eps, k):  # -> a distribution before exploration
        raise NotImplementedError

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        present = stats["count"] > 0
        # The reference's iteration counter is 1-based (the train step's is 0-based).
        t = step + 1
        active = (t > self.warmup_steps) & (t % self.update_every == 0)
        reward = self._accumulate(state, stats, present)
        eps = exploration_rate(k, t)
        w = (1.0 - k * eps) * self._mix(reward, state["eps"], k) + eps
        w = w / jnp.sum(w)
        return record_weights(
            state,
            jnp.where(active, w, state["weights"]),
            reward=jnp.where(active, reward, state["reward"]),
            eps=jnp.where(active, eps, state["eps"]))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ODM(_Bandit):
    name = "odm"
    requires = frozenset({"loss", "count", "domain_id", "sampling_weights"})

    reward_scale: float = 0.1
    draws_per_batch: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.draws_per_batch < 0:
            raise ValueError(f"mixer 'odm': draws_per_batch must be >= 0, "
                             f"got {self.draws_per_batch}")

    def _presence_probability(self, stats, state) -> jax.Array:
        pi = stats.get("sampling_weights", state["weights"])
        draws = self.draws_per_batch or stats["domain_id"].shape[0]
        q = -jnp.expm1(draws * jnp.log1p(-jnp.clip(pi, 0.0, 1.0)))
        return jnp.maximum(q, 1e-6)

    def _accumulate(self, state, stats, present):
        inc = self.reward_scale * stats["loss"] / self._presence_probability(stats, state)
        inc = jnp.clip(jnp.where(present, inc, 0.0), -VALUE_CAP, VALUE_CAP)
        return jnp.clip(state["reward"] + inc, -VALUE_CAP, VALUE_CAP)

    def _mix(self, reward, prev_eps, k):
        return jax.nn.softmax(prev_eps * reward)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ODMSmoothed(_Bandit):
    name = "odm_smoothed"
    requires = frozenset({"loss", "count"})

    smoothing: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"mixer 'odm_smoothed': smoothing must be in [0, 1), "
                             f"got {self.smoothing}")

    def _accumulate(self, state, stats, present):
        target = jnp.exp(jnp.minimum(stats["loss"], 80.0))
        smoothed = self.smoothing * state["reward"] + (1.0 - self.smoothing) * target
        return jnp.where(present, smoothed, state["reward"])

    def _mix(self, reward, prev_eps, k):
        del prev_eps  # the linear group_update's eps_{t-1} cancels in the ratio
        total = jnp.sum(reward)
        return jnp.where(total > 0, reward / jnp.where(total > 0, total, 1.0), 1.0 / k)
