"""Mixture schedules: staged mixtures, linear interpolation, end-of-training upsampling.

Practitioners' schedules as mixers, so the loop, logs, resume and sampler lag
treat them like any other method. A schedule's weights are a pure function of
the step (and, for ``upsample_end``, of the online mixer it wraps), so a
resumed run reproduces them exactly, across stage boundaries too.

Timing convention: ``update`` at step s returns the weights for the next batch,
n = s + 1 (the sampler applies weights handed over at step s from batch s + lag,
``data.lag`` = 1 by default, so stage boundaries are exact at lag 1; with a
larger lag every change reaches the data lag - 1 batches later, as for every
mixer). ``init`` gives the weights of batch 0.

``staged`` -- piecewise-constant stages (Levanter/Marin-style staged mixtures,
e.g. Marin's ``MixtureDataset`` with ``(start_step, weights)`` stages)::

    w(n) = W_s   for start_s <= n < end_s

Stages are ``{"start", "end", "weights": {domain: weight}}`` (end exclusive),
in ``unit`` = ``step``, ``token`` (a boundary at token count X is the first
step that starts at or after X: ceil(X / tokens_per_step)) or ``fraction`` of
``train.steps`` (round(f * steps)). They must be contiguous from 0 and end at
or after the run's last step: overlaps, gaps and a short cover are errors.

``linear_schedule`` -- linear interpolation between mixtures at knots
``{"at", "weights"}`` (first knot at 0, last at or after the run's end)::

    w(n) = (1 - a) W_i + a W_{i+1},   a = (n - at_i) / (at_{i+1} - at_i),  at_i <= n < at_{i+1}

(the "Cooldown" temperature schedule of Li et al., NAACL 2025, arXiv
2410.04579, is a two-knot linear schedule between two temperature mixtures).

``upsample_end`` -- domain upsampling at the end of training (Blakeney, Paul,
Larsen, Kolesnikov, Fried, "Does your data spark joy? Performance gains from
domain upsampling at the end of training", arXiv 2406.03476): the online (or
static) mixer ``base`` runs throughout; during the last ``fraction`` of the
steps (n >= round((1 - fraction) * steps); 10-20 % is the paper's best)::

    multiply:  w(n) = normalise(w_base(n) * f),   f_d = factors[d] (1 if unnamed)
    override:  w(n) = normalise(factors)          (a fixed final mixture)

The wrapped mixer keeps updating from its own state (its statistics and
weights are unaffected by the override), so switching the phase on changes
only what is trained on. ``apply_to`` is the base mixer's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, build, init_state, record_weights, register

UNITS = ("step", "token", "fraction")


def mixture_vector(spec: Mapping[str, float], domains: Sequence[str], what: str) -> np.ndarray:
    """``{domain: weight}`` -> f64[K] summing to 1 (unnamed domains get 0)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{what}: expected {{domain: weight}}, got {spec!r}")
    unknown = sorted(set(spec) - set(domains))
    if unknown:
        raise ValueError(f"{what}: unknown domains {unknown}; training domains: {list(domains)}")
    w = np.asarray([float(spec.get(d, 0.0)) for d in domains], np.float64)
    for d, x in zip(domains, w):
        if not np.isfinite(x) or x < 0:
            raise ValueError(f"{what}: weight of domain {d!r} must be finite and >= 0, got {x}")
    if w.sum() <= 0:
        raise ValueError(f"{what}: all weights are 0")
    return w / w.sum()


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Schedule(Mixer):
    """Common fields: what the trainer knows about the run (filled by ``build``)."""

    unit: str = "step"
    domains: tuple[str, ...] | None = None
    total_steps: int | None = None
    tokens_per_step: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.unit not in UNITS:
            raise ValueError(f"mixer {self.name!r}: unit must be one of {UNITS}, got {self.unit!r}")
        if self.domains is not None:
            self.table()   # every check before anything compiles

    def to_step(self, x: float, what: str) -> int:
        """A boundary in ``unit`` as a step index."""
        if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
            raise ValueError(f"mixer {self.name!r}: {what} must be a number >= 0, got {x!r}")
        if self.unit == "step":
            if x != int(x):
                raise ValueError(f"mixer {self.name!r}: {what} = {x} is not a whole step")
            return int(x)
        if self.unit == "token":
            if not self.tokens_per_step:
                raise ValueError(f"mixer {self.name!r}: unit 'token' needs tokens_per_step")
            return int(math.ceil(x / self.tokens_per_step))
        if self.total_steps is None:
            raise ValueError(f"mixer {self.name!r}: unit 'fraction' needs the run's steps")
        if x > 1:
            raise ValueError(f"mixer {self.name!r}: {what} = {x} is a fraction > 1")
        return int(round(x * self.total_steps))

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _require_domains(self, num_domains: int):
        if self.domains is None or len(self.domains) != num_domains:
            raise ValueError(f"mixer {self.name!r} needs the {num_domains} domain names "
                             "(mixing.build passes them)")

    def schedule_weights(self, n: jax.Array) -> jax.Array:
        raise NotImplementedError

    def init(self, num_domains: int):
        self._require_domains(num_domains)
        return init_state(self.schedule_weights(jnp.int32(0)),
                          count_initial=self.average_includes_initial)

    def update(self, state, stats, step):
        del stats
        return record_weights(state, self.schedule_weights(step + 1))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Staged(_Schedule):
    name = "staged"

    stages: tuple[Mapping[str, Any], ...] = ()

    def table(self):
        """(i32[S] stage starts, f32[S, K] stage weights), after checking the cover."""
        stages = list(self.stages)
        if not stages:
            raise ValueError("mixer 'staged': stages is empty")
        starts, mixes, prev_end = [], [], 0
        for i, st in enumerate(stages):
            what = f"mixer 'staged': stage {i}"
            if not isinstance(st, Mapping) or set(st) != {"start", "end", "weights"}:
                raise ValueError(f"{what}: expected keys start, end, weights; got {st!r}")
            start = self.to_step(st["start"], f"stage {i} start")
            end = self.to_step(st["end"], f"stage {i} end")
            if end <= start:
                raise ValueError(f"{what}: end {st['end']} <= start {st['start']}")
            if start < prev_end:
                raise ValueError(f"{what} overlaps stage {i - 1} (starts at step {start}, "
                                 f"stage {i - 1} ends at step {prev_end})")
            if start > prev_end:
                raise ValueError(f"{what}: steps {prev_end}..{start - 1} are in no stage")
            starts.append(start)
            mixes.append(mixture_vector(st["weights"], self.domains, f"{what} weights"))
            prev_end = end
        if self.total_steps is not None and prev_end < self.total_steps:
            raise ValueError(f"mixer 'staged': the stages end at step {prev_end} but the run "
                             f"has {self.total_steps} steps")
        return np.asarray(starts, np.int32), np.stack(mixes).astype(np.float32)

    def schedule_weights(self, n):
        starts, mixes = self.table()
        idx = jnp.searchsorted(jnp.asarray(starts), n, side="right") - 1
        return jnp.asarray(mixes)[jnp.clip(idx, 0, len(starts) - 1)]


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearSchedule(_Schedule):
    name = "linear_schedule"

    knots: tuple[Mapping[str, Any], ...] = ()

    def table(self):
        """(f32[S] knot steps, f32[S, K] knot mixtures)."""
        knots = list(self.knots)
        if len(knots) < 2:
            raise ValueError("mixer 'linear_schedule': needs at least 2 knots")
        at, mixes = [], []
        for i, kn in enumerate(knots):
            what = f"mixer 'linear_schedule': knot {i}"
            if not isinstance(kn, Mapping) or set(kn) != {"at", "weights"}:
                raise ValueError(f"{what}: expected keys at, weights; got {kn!r}")
            s = self.to_step(kn["at"], f"knot {i} at")
            if at and s <= at[-1]:
                raise ValueError(f"{what}: at step {s} is not after knot {i - 1} (step {at[-1]})")
            at.append(s)
            mixes.append(mixture_vector(kn["weights"], self.domains, f"{what} weights"))
        if at[0] != 0:
            raise ValueError(f"mixer 'linear_schedule': the first knot must be at 0, "
                             f"got step {at[0]}")
        if self.total_steps is not None and at[-1] < self.total_steps - 1:
            raise ValueError(f"mixer 'linear_schedule': the last knot is at step {at[-1]} but "
                             f"the run has {self.total_steps} steps")
        return np.asarray(at, np.float32), np.stack(mixes).astype(np.float32)

    def schedule_weights(self, n):
        at, mixes = self.table()
        at, mixes = jnp.asarray(at), jnp.asarray(mixes)
        x = jnp.asarray(n, jnp.float32)
        i = jnp.clip(jnp.searchsorted(at, x, side="right") - 1, 0, len(at) - 2)
        a = jnp.clip((x - at[i]) / (at[i + 1] - at[i]), 0.0, 1.0)
        w = (1.0 - a) * mixes[i] + a * mixes[i + 1]
        return w / jnp.sum(w)


MODES = ("multiply", "override")


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UpsampleEnd(Mixer):
    """End-of-training upsampling around any mixer (see the module docstring)."""

    name = "upsample_end"

    base: str = "natural"
    base_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    factors: Mapping[str, float] = dataclasses.field(default_factory=dict)
    fraction: float = 0.1
    mode: str = "multiply"
    domains: tuple[str, ...] | None = None
    token_counts: tuple[float, ...] | None = None
    total_steps: int | None = None
    tokens_per_step: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.fraction <= 1:
            raise ValueError(f"mixer 'upsample_end': fraction must be in (0, 1], "
                             f"got {self.fraction}")
        if self.mode not in MODES:
            raise ValueError(f"mixer 'upsample_end': mode must be one of {MODES}, "
                             f"got {self.mode!r}")
        if self.base in ("upsample_end",):
            raise ValueError("mixer 'upsample_end': base cannot be upsample_end itself")
        if self.domains is not None:
            self.factor_vector()
            _ = self.inner

    def __hash__(self):
        return id(self)

    @functools.cached_property
    def inner(self) -> Mixer:
        if self.domains is None:
            raise ValueError("mixer 'upsample_end' needs the domain names (mixing.build)")
        extra = {}
        try:
            from mixjax.mixing.base import hparam_names
            fields = set(hparam_names(self.base))
        except KeyError as e:
            raise ValueError(f"mixer 'upsample_end': base {e.args[0]}") from None
        for key in ("total_steps", "tokens_per_step"):
            if key in fields and getattr(self, key) is not None:
                extra[key] = getattr(self, key)
        return build(self.base, {**dict(self.base_hparams), **extra}, domains=self.domains,
                     token_counts=self.token_counts, apply_to=self.apply_to_override)

    def factor_vector(self) -> np.ndarray:
        what = "mixer 'upsample_end': factors"
        if not self.factors:
            raise ValueError(f"{what}: name at least one domain to upsample")
        unknown = sorted(set(self.factors) - set(self.domains))
        if unknown:
            raise ValueError(f"{what}: unknown domains {unknown}; training domains: "
                             f"{list(self.domains)}")
        if self.mode == "override":
            return mixture_vector(self.factors, self.domains, what)
        f = np.asarray([float(self.factors.get(d, 1.0)) for d in self.domains], np.float64)
        for d, x in zip(self.domains, f):
            if not np.isfinite(x) or x < 0:
                raise ValueError(f"{what}: factor of {d!r} must be finite and >= 0, got {x}")
        return f

    @property
    def start_step(self) -> int:
        if self.total_steps is None:
            raise ValueError("mixer 'upsample_end' needs the run's steps (mixing.build)")
        return int(round((1.0 - self.fraction) * self.total_steps))

    # -- delegate to the wrapped mixer ---------------------------------------------------
    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.inner.requires)

    @property
    def apply_to(self) -> str:
        return self.inner.apply_to

    @property
    def multi_target(self) -> bool:
        return bool(getattr(self.inner, "multi_target", False))

    @property
    def wants_eval(self):
        """The base mixer's on-demand evaluations (Aioli, Skill-it), or None."""
        return getattr(self.inner, "wants_eval", None)

    @property
    def average_includes_initial(self) -> bool:  # type: ignore[override]
        return self.inner.average_includes_initial

    @property
    def model_gradient(self) -> str:  # type: ignore[override]
        return self.inner.model_gradient

    def gradient_coeffs(self, state, stats):
        """The base mixer's model-gradient coefficients, scaled like its weights."""
        c = self.inner.gradient_coeffs(state["inner"], stats)
        ratio = state["weights"] / jnp.where(state["base_weights"] > 0,
                                             state["base_weights"], 1.0)
        return c * jnp.where(state["base_weights"] > 0, ratio, 0.0)

    def _phase(self, base_w: jax.Array, n: jax.Array) -> jax.Array:
        f = jnp.asarray(self.factor_vector(), jnp.float32)
        late = f if self.mode == "override" else base_w * f
        total = jnp.sum(late)
        late = jnp.where(total > 0, late / jnp.where(total > 0, total, 1.0), base_w)
        return jnp.where(n >= self.start_step, late, base_w)

    def init(self, num_domains: int):
        inner = self.inner.init(num_domains)
        base_w = self.inner.weights(inner)
        return init_state(self._phase(base_w, jnp.int32(0)),
                          count_initial=self.average_includes_initial,
                          inner=inner, base_weights=jnp.array(base_w))

    def update(self, state, stats, step):
        inner = self.inner.update(state["inner"], stats, step)
        base_w = self.inner.weights(inner)
        return record_weights(state, self._phase(base_w, step + 1), inner=inner,
                              base_weights=base_w)
