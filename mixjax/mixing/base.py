"""The mixer protocol and the registry of mixing algorithms.

A *mixer* turns per-domain training statistics into domain weights. It knows
only arrays: never models, data pipelines or optimisers. Every mixer is a
frozen dataclass whose fields are its hyperparameters::

    mixer = mixjax.mixing.get("doremi", eta=1.0, smoothing=1e-3)
    mixer.requires                  # statistics it needs (mixjax.mixing.statistics)
    state = mixer.init(num_domains) # a pytree of arrays
    state = mixer.update(state, stats, step)   # pure and jittable
    mixer.weights(state)            # f32[K] weights for the next step
    mixer.average(state)            # f32[K] time-averaged weights
    mixer.apply_to                  # "sampling", "loss" or "both"
    mixer.model_gradient            # "loss" (default) or "coeffs" (gradient_coeffs)
    mixer.multi_target              # False (default): grads.target names one domain
    mixer.wants_eval                # None (default) or wants_eval(done) -> bool
    mixer.average_includes_initial  # whether average() counts the initial weights

``apply_to`` chooses the "upsample or upweight" route:

* ``sampling``: the sampler draws domains with ``weights``; the loss is the
  plain token mean.
* ``loss``: the sampler keeps its own (reference) weights ``p``; each token of
  domain ``d`` is weighted by ``w_d / p_d`` (importance correction), so the
  objective estimates ``sum_d w_d E[loss_d]``.
* ``both``: the sampler draws with ``weights`` *and* the loss is weighted by
  ``w_d`` (no correction); used by methods that want both effects.

State convention: a dict holding at least ``weights`` (f32[K]),
``weight_sum`` (f32[K]) and ``num_weights`` (f32[]); ``average`` is
``weight_sum / num_weights`` (the current weights while nothing is counted).
Whether the initial weights alpha_0 count in that mean is a per-mixer property,
``average_includes_initial``, following each reference: True for DoReMi (its
running mean starts with alpha_0), False for DoGE (its running sum and count
start at 0, so the average is the mean of alpha_1..alpha_T).

Non-finite statistics: :func:`guarded_update` runs ``update`` and, if the new
weights are not finite (a NaN or inf in a present domain's statistics), keeps
the previous state and records the first offending domain in
``state["nonfinite_domain"]`` (-1 when all is well). The host loop reads it one
step late and raises :class:`NonFiniteStatsError` naming the domain and step.

A research fork adds a method by writing one module with a ``Mixer`` subclass
decorated with :func:`register`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing import statistics
from mixjax.registry import ClassRegistry

Array = jax.Array
State = dict[str, Any]

APPLY_TO = ("sampling", "loss", "both")

# The statistics the train step can provide, {name: "shape doc"} (K domains, B
# sequences, S tokens per sequence): a live view of the registry in
# ``mixjax.mixing.statistics``, where each one is declared once. A mixer lists the
# keys it needs in ``requires``; the train step computes only what the mixer asks for.
STATS: Mapping[str, str] = statistics.DESCRIPTIONS

# How the model gradient is formed (``Mixer.model_gradient``).
# "example_coeffs": ``sum_b c_b g_b`` over the batch's sequences (c f32[B] from
# ``gradient_coeffs``; the engine's ``combine_examples``), for aggregators over examples.
MODEL_GRADIENTS = ("loss", "coeffs", "example_coeffs")


class NonFiniteStatsError(FloatingPointError):
    """A domain's statistics were NaN or infinite; the weights were not updated."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mixer:
    """Base class of every mixing algorithm (see the module docstring)."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    default_apply_to: ClassVar[str] = "sampling"
    # Whether ``average`` counts the initial weights alpha_0 (see the module docstring).
    average_includes_initial: ClassVar[bool] = True
    # How the train step forms the model gradient: "loss" (the pullback of the weighted
    # token-mean objective, the default) or "coeffs" (``sum_d c_d g_d`` from the gradient
    # engine with ``c = gradient_coeffs(mix_state, stats)``, e.g. DoGE, PCGrad, MGDA).
    model_gradient: ClassVar[str] = "loss"

    # -- hooks the loop and the step read (declared here so a new mixer sees all of them) --
    multi_target: ClassVar[bool] = False
    """Whether ``grads.target`` may name several domains (a tuple): the loop then supplies
    one target batch per domain and the ``grad_dot`` statistic has one column each (DoGE's
    out-of-domain rule). False: a tuple there is a config error naming ``grads.target``."""

    wants_eval: ClassVar[Callable[[Any], Any] | None] = None
    """On-demand evaluations, independent of ``train.eval_every``: None (the default) or a
    method ``wants_eval(done) -> bool`` that the loop calls after every step with the number
    of completed steps; True evaluates the validation sets then and hands the per-domain
    losses to the next ``update`` as the ``eval_loss`` statistic (Aioli's probes, Skill-it's
    rounds). A mixer that only needs ``eval_loss`` on the ``eval_every`` grid leaves it None
    and lists ``"eval_loss"`` in ``requires``."""

    example_weighting: ClassVar[bool] = False
    """Whether the step multiplies sequence b's loss by ``example_weights(state, stats)[b]``
    (f32[B], computed from the *updated* state, held constant in the gradient): per-example
    reweighting rules (Prospect's spectral risk, Feasible Learning's multipliers). The weights
    compose with the domain weights r_d and the data's ``sample_weight`` (mixjax.core.step)."""

    # Overrides ``default_apply_to`` when set (the config's "upsample or upweight").
    apply_to_override: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mode = cls.__dict__.get("model_gradient", None)
        if isinstance(mode, str) and mode not in MODEL_GRADIENTS:
            raise TypeError(f"mixer {cls.__qualname__}: model_gradient must be one of "
                            f"{MODEL_GRADIENTS}, got {mode!r}")
        # A gradient_coeffs without model_gradient = "coeffs" would be silently ignored.
        if "example_weights" in cls.__dict__ and not getattr(cls, "example_weighting", False):
            raise TypeError(f"mixer {cls.__qualname__} defines example_weights but its "
                            "example_weighting is False; set example_weighting = True")
        if "gradient_coeffs" in cls.__dict__ and getattr(cls, "model_gradient", None) == "loss":
            raise TypeError(f"mixer {cls.__qualname__} defines gradient_coeffs but its "
                            "model_gradient is 'loss'; set model_gradient = 'coeffs'")

    def __post_init__(self):
        if self.apply_to_override is not None and self.apply_to_override not in APPLY_TO:
            raise ValueError(
                f"mixer {self.name!r}: apply_to must be one of {APPLY_TO}, "
                f"got {self.apply_to_override!r}")

    @property
    def apply_to(self) -> str:
        return self.apply_to_override or self.default_apply_to

    # -- protocol -----------------------------------------------------------
    def init(self, num_domains: int) -> State:
        return init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                          count_initial=self.average_includes_initial)

    def update(self, state: State, stats: Mapping[str, Array], step: Array) -> State:
        del stats, step
        return state

    def weights(self, state: State) -> Array:
        return state["weights"]

    def average(self, state: State) -> Array:
        return average_weights(state)

    def example_weights(self, state: State, stats: Mapping[str, Array]) -> Array:
        """f32[B] per-sequence loss weights (``example_weighting = True``)."""
        raise NotImplementedError(f"mixer {self.name!r} has example_weighting False; "
                                  "it gives no per-example weights")

    def gradient_coeffs(self, state: State, stats: Mapping[str, Array]) -> Array:
        """``c`` f32[K]: the model gradient is ``sum_d c_d g_d`` (``model_gradient="coeffs"``);
        ``c`` f32[B]: it is ``sum_b c_b g_b`` over sequences (``"example_coeffs"``)."""
        raise NotImplementedError(f"mixer {self.name!r} has model_gradient "
                                  f"{self.model_gradient!r}; only 'coeffs' mixers give coefficients")


def average_weights(state: State) -> Array:
    """``weight_sum / num_weights``; the current weights while nothing is counted yet."""
    n = state["num_weights"]
    return jnp.where(n > 0, state["weight_sum"] / jnp.maximum(n, 1.0), state["weights"])


def init_state(weights: Array, *, count_initial: bool = True, **extra: Any) -> State:
    """The common state: current weights, their running sum and count.

    ``count_initial``: whether ``weights`` (alpha_0) enter the running mean.
    """
    weights = jnp.asarray(weights, jnp.float32)
    return {
        "weights": weights,
        # a copy: donation needs distinct buffers
        "weight_sum": jnp.array(weights) if count_initial else jnp.zeros_like(weights),
        "num_weights": jnp.full((), 1.0 if count_initial else 0.0, jnp.float32),
        "nonfinite_domain": -jnp.ones((), jnp.int32),
        **extra,
    }


def record_weights(state: State, weights: Array, **extra: Any) -> State:
    """Returns ``state`` with new current weights added to the running mean."""
    return {
        **state,
        **extra,
        "weights": weights,
        "weight_sum": state["weight_sum"] + weights,
        "num_weights": state["num_weights"] + 1.0,
    }


def guarded_update(mixer: Mixer, state: State, stats: Mapping[str, Array], step: Array) -> State:
    """``mixer.update`` that never lets NaN or inf reach the weights.

    If any required statistic of a domain is non-finite (each statistic's
    ``attribution`` in ``mixjax.mixing.statistics`` says how: per-domain rows
    directly, per-token and per-sequence values through ``domain_id``, counting
    only positions in ``token_mask``), or the new weights are, the previous state is kept and
    ``nonfinite_domain`` names the first culprit (the weights' index if the
    statistics looked fine).
    """
    new = mixer.update(state, stats, step)
    k = state["weights"].shape[0]
    bad = statistics.nonfinite_domains(mixer.requires, stats, k)
    # Blame the statistics first: NaN weights are only the symptom.
    bad = jnp.where(jnp.any(bad), bad, ~jnp.isfinite(new["weights"]))
    any_bad = jnp.any(bad)
    culprit = jnp.where(any_bad, jnp.argmax(bad).astype(jnp.int32), -1)
    kept = jax.tree.map(lambda old, nw: jnp.where(any_bad, old, nw), state, new)
    kept["nonfinite_domain"] = culprit
    return kept


def check_weight_vector(weights: Any, domains: tuple[str, ...] | None = None,
                        what: str = "weights") -> np.ndarray:
    """Validates a host-side weight vector: finite, non-negative, sums to 1 (1e-6)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"{what}: expected a vector, got shape {w.shape}")
    if domains is not None and len(w) != len(domains):
        raise ValueError(f"{what}: got {len(w)} weights for {len(domains)} domains {list(domains)}")
    label = (lambda i: repr(domains[i])) if domains is not None else (lambda i: f"#{i}")
    for i, x in enumerate(w):
        if not np.isfinite(x):
            raise ValueError(f"{what}: weight of domain {label(i)} is not finite ({x})")
        if x < 0:
            raise ValueError(f"{what}: weight of domain {label(i)} is negative ({x})")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"{what}: weights must sum to 1 within 1e-6, got {w.sum():.9g}")
    return w


# -- registry ---------------------------------------------------------------
_MIXERS = ClassRegistry("mixer")
register = _MIXERS.register        # class decorator: makes ``cls`` available as ``get(cls.name)``
names = _MIXERS.names
mixer_class = _MIXERS.get


def hparam_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(mixer_class(name))]


def get(name: str, **hparams: Any) -> Mixer:
    """Builds mixer ``name``; an unknown hyperparameter is a clear error."""
    cls = mixer_class(name)
    known = hparam_names(name)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(f"mixer {name!r} has no hyperparameter(s) {unknown}; known: {known}")
    return cls(**hparams)


def build(name: str, hparams: Mapping[str, Any], *, domains: tuple[str, ...],
          token_counts: tuple[float, ...] | None = None,
          apply_to: str | None = None, total_steps: int | None = None,
          tokens_per_step: int | None = None, num_targets: int | None = None) -> Mixer:
    """``get`` plus what the trainer knows: domain names, token counts, the run's length,
    the number of target domains (``grads.target``).

    ``domains`` / ``token_counts`` / ``total_steps`` / ``tokens_per_step`` /
    ``num_targets`` are passed only to mixers that declare those fields (``manual``,
    ``natural``, ``temperature``, the schedules, ``dids``, ...). A ``num_targets`` given
    in ``hparams`` must match the one the trainer knows.
    """
    fields = set(hparam_names(name))
    extra: dict[str, Any] = {}
    if "domains" in fields and "domains" not in hparams:
        extra["domains"] = tuple(domains)
    if "token_counts" in fields and "token_counts" not in hparams and token_counts is not None:
        extra["token_counts"] = tuple(float(c) for c in token_counts)
    for key, value in (("total_steps", total_steps), ("tokens_per_step", tokens_per_step),
                       ("num_targets", num_targets)):
        if key in fields and key not in hparams and value is not None:
            extra[key] = int(value)
    if ("num_targets" in fields and num_targets is not None
            and hparams.get("num_targets", num_targets) != num_targets):
        raise ValueError(f"mixer {name!r}: num_targets={hparams['num_targets']}, but "
                         f"grads.target names {num_targets} domain(s)")
    if apply_to is not None:
        extra["apply_to_override"] = apply_to
    return get(name, **dict(hparams), **extra)
