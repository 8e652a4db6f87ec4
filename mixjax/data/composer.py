"""Batch composition: which domain each row of a global batch comes from.

This is the host-side, data-free half of the sampler ("Design B" of
jax-stack.md B3): given the weight schedule it decides the domain of every
row of global batch ``t``. It reads no data, so tests can draw 10^5 domain
ids cheaply, and it is the only place randomness enters the batch order.

Modes (``w`` = weights in force for batch ``t``, ``B`` = global batch size):

* ``multinomial``: ``counts ~ Multinomial(B, w)`` (i.i.d. draws).
* ``stratified``: deterministic largest-remainder rounding of ``w * B + r``
  with a carried remainder ``r`` (``r <- w * B + r - counts``), so for a
  constant ``w`` the cumulative count of domain ``d`` after ``T`` batches stays
  within 1 of ``T * w_d * B``. A domain whose weight is 0 is never drawn and
  its remainder is dropped.
* ``per_domain``: ``per_domain_count`` rows of every domain each batch
  (``B = per_domain_count * K``), in domain-blocked order; the weights do not
  change the composition (they are loss weights for such methods).

Rows are shuffled by a permutation in ``multinomial``/``stratified`` mode.
Randomness is counter-based: batch ``t`` uses
``numpy.random.default_rng([seed, t])``, so the RNG needs no state.

Weight lag: ``set_weights(w, step=t)`` records weights produced after train
step ``t``; they are used from batch ``t + lag`` on. The stream is therefore a
function of (seed, weight history) only, and batches up to ``t + lag - 1`` can
be prefetched. A call that arrives after batch ``t + lag`` was drawn is an
error (raise ``lag``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mixjax.mixing.base import check_weight_vector

MODES = ("multinomial", "stratified", "per_domain")


def resolve_weights(weights: Any, domains: Sequence[str], what: str = "weights") -> np.ndarray:
    """A weight spec -> validated float64[K] in ``domains`` order.

    ``weights`` is ``None`` (uniform), a mapping ``{domain: w}`` (missing
    domains get 0; an unknown name is an error naming it) or a length-K
    vector. Must be finite, non-negative and sum to 1 within 1e-6.
    """
    domains = tuple(domains)
    if weights is None:
        return np.full(len(domains), 1.0 / len(domains))
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in domains]
        if unknown:
            raise ValueError(f"{what}: unknown domain {unknown[0]!r} (known domains: {list(domains)})")
        weights = [float(weights.get(d, 0.0)) for d in domains]
    return check_weight_vector(weights, domains, what=what)


class BatchComposer:
    """Decides the domain of each row of each global batch (see module docstring)."""

    def __init__(self, domains: Sequence[str], *, batch_size: int | None = None, weights: Any = None,
                 mode: str = "multinomial", per_domain_count: int | None = None, lag: int = 1,
                 seed: int = 0):
        self.domains = tuple(domains)
        k = len(self.domains)
        if mode not in MODES:
            raise ValueError(f"unknown sampler mode {mode!r}; known: {MODES}")
        if mode == "per_domain":
            if per_domain_count is None:
                if batch_size is None or batch_size % k:
                    raise ValueError(f"per_domain mode: batch_size {batch_size} is not a multiple of "
                                     f"the {k} domains; set per_domain_count")
                per_domain_count = batch_size // k
            if per_domain_count < 1 or (batch_size is not None and batch_size != per_domain_count * k):
                raise ValueError(f"per_domain mode: batch_size {batch_size} != per_domain_count "
                                 f"{per_domain_count} x {k} domains")
            batch_size = per_domain_count * k
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.mode, self.batch_size, self.lag, self.seed = mode, int(batch_size), int(lag), int(seed)
        self.per_domain_count = per_domain_count
        w0 = resolve_weights(weights, self.domains, "initial weights")
        self.step = 0                                          # index of the next batch
        self._schedule: list[tuple[int, np.ndarray]] = [(0, w0)]   # (first batch, weights)
        self._last_set_step: int | None = None
        self._remainder = np.zeros(k, np.float64)

    # -- weights ------------------------------------------------------------
    def set_weights(self, weights: Any, step: int) -> None:
        """Weights produced after train step ``step``; used from batch ``step + lag``."""
        w = resolve_weights(weights, self.domains, f"set_weights(step={step})")
        step = int(step)
        if self._last_set_step is not None and step < self._last_set_step:
            raise ValueError(f"set_weights: step {step} is before the previous call's step "
                             f"{self._last_set_step}; steps must not decrease")
        first = step + self.lag
        if first < self.step:
            raise ValueError(f"set_weights(step={step}) with lag {self.lag} targets batch {first}, "
                             f"but batches up to {self.step - 1} were already drawn; increase lag "
                             f"(>= {self.step - step}) or call set_weights earlier")
        self._last_set_step = step
        self._schedule = [(s, x) for s, x in self._schedule if s < first] + [(first, w)]

    def weights_for(self, step: int) -> np.ndarray:
        """The weights batch ``step`` is (or will be, as known now) drawn with."""
        ok = [x for s, x in self._schedule if s <= step]
        if not ok:
            raise ValueError(f"no weights known for batch {step} (earliest kept: {self._schedule[0][0]})")
        return ok[-1]

    # -- composition ----------------------------------------------------------
    def _counts(self, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, k = self.batch_size, len(self.domains)
        if self.mode == "per_domain":
            return np.full(k, self.per_domain_count, np.int64)
        if self.mode == "multinomial":
            return rng.multinomial(b, w / w.sum()).astype(np.int64)
        # stratified: largest remainder of w*B + r over the domains with w > 0
        live = w > 0
        r = np.where(live, self._remainder, 0.0)
        target = w * b + r
        counts = np.where(live, np.floor(np.maximum(target, 0.0)), 0).astype(np.int64)
        deficit = b - int(counts.sum())
        # Greedy: each extra row goes to the live domain furthest below its target,
        # each surplus row (possible after a remainder was dropped) comes from the
        # drawn domain furthest above it. Ties go to the lower domain index.
        while deficit > 0:
            counts[np.argmax(np.where(live, target - counts, -np.inf))] += 1
            deficit -= 1
        while deficit < 0:
            counts[np.argmin(np.where(live & (counts > 0), target - counts, np.inf))] -= 1
            deficit += 1
        self._remainder = np.where(live, target - counts, 0.0)
        return counts

    def next_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Advances one batch: (domain_id int32[B] global, counts int32[K])."""
        t = self.step
        w = self.weights_for(t)
        rng = np.random.default_rng([self.seed, t])
        counts = self._counts(w, rng)
        ids = np.repeat(np.arange(len(self.domains), dtype=np.int32), counts)
        if self.mode != "per_domain":
            ids = ids[rng.permutation(len(ids))]
        self._advance()
        return ids, counts.astype(np.int32)

    def _advance(self) -> None:
        self.step += 1
        # Drop schedule entries no future batch can use.
        keep = [i for i, (s, _) in enumerate(self._schedule) if s <= self.step]
        self._schedule = self._schedule[keep[-1]:] if keep else self._schedule

    # -- state ----------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "schedule": [[int(s), [float(x) for x in w]] for s, w in self._schedule],
            "last_set_step": self._last_set_step,
            "remainder": [float(x) for x in self._remainder],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        k = len(self.domains)
        sched = [(int(s), np.asarray(w, np.float64)) for s, w in state["schedule"]]
        if any(len(w) != k for _, w in sched) or len(state["remainder"]) != k:
            raise ValueError(f"sampler state is for a different number of domains (expected {k})")
        self.step = int(state["step"])
        self._schedule = sched
        self._last_set_step = state["last_set_step"]
        self._remainder = np.asarray(state["remainder"], np.float64)


def next_ids_many(composers: list[BatchComposer]) -> tuple[np.ndarray, np.ndarray]:
    """``next_ids`` of every composer at once: (domain_id int32[P, B], counts int32[P, K]).

    Equal to ``[c.next_ids() for c in composers]`` (and leaves the same states), for
    many composers of one batch size and step, e.g. a proxy swarm's (one per proxy). In
    ``stratified`` mode the largest-remainder counts are computed for all of them in
    array operations: with ``g_d = target_d - floor(target_d)`` in [0, 1) and a deficit
    ``D = B - sum_d floor(target_d)`` no larger than the number of live domains with
    ``target_d >= 0``, the greedy loop of ``_counts`` gives one extra row to each of
    the ``D`` largest ``g_d`` (ties to the lower index: a stable sort), since a domain
    that got its row falls below every ``g >= 0``. Other composers (and other modes)
    take the loop. Each composer still draws its permutation from its own
    ``default_rng([seed, t])``, so the rows are the same.
    """
    if not composers:
        raise ValueError("next_ids_many: no composers")
    c0 = composers[0]
    t, b, k = c0.step, c0.batch_size, len(c0.domains)
    if c0.mode != "stratified" or any(c.mode != c0.mode or c.step != t or c.batch_size != b
                                      or len(c.domains) != k for c in composers):
        ids, counts = zip(*(c.next_ids() for c in composers))
        return np.stack(ids), np.stack(counts)
    w = np.stack([c.weights_for(t) for c in composers])               # float64[P, K]
    live = w > 0
    target = w * b + np.where(live, np.stack([c._remainder for c in composers]), 0.0)
    counts = np.where(live, np.floor(np.maximum(target, 0.0)), 0).astype(np.int64)
    deficit = b - counts.sum(axis=1)
    simple = (deficit >= 0) & (deficit <= (live & (target >= 0)).sum(axis=1))
    order = np.argsort(np.where(live, counts - target, np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(len(composers), 0), axis=1)
    counts += simple[:, None] & (rank < deficit[:, None])
    remainder = np.where(live, target - counts, 0.0)
    for p in np.flatnonzero(~simple):    # a dropped remainder left a surplus: the loop
        counts[p] = composers[p]._counts(w[p], None)
        remainder[p] = composers[p]._remainder
    base = np.repeat(np.tile(np.arange(k, dtype=np.int32), len(composers)), counts.reshape(-1))
    ids = base.reshape(len(composers), b)
    for p, c in enumerate(composers):
        ids[p] = ids[p][np.random.default_rng([c.seed, t]).permutation(b)]
        c._remainder = remainder[p]
        c._advance()
    return ids, counts.astype(np.int32)
