"""The registry of training statistics: each one declared once.

A mixer names the statistics it needs in ``requires``; the train step
(``mixjax.core.step``) computes exactly those, by asking this registry. Each
:class:`Statistic` says

* ``shape``: its shape in K (domains), B (sequences), S (tokens per sequence);
* ``attribution``: how a non-finite value is blamed on a domain by the guard
  (``mixing.guarded_update``): ``"domain"`` (axis 0 is the domain axis K),
  ``"sequence"`` (axis 0 is the batch axis B; blamed through ``domain_id``,
  counting only positions where ``token_mask`` is 1 when it has the same shape)
  or ``"none"`` (inputs and scalars, never blamed);
* ``needs``: what computing it takes, from :data:`NEEDS`;
* ``compute(ctx)``: how the step computes it from its :class:`StepContext`.

The step, its factory (``mixjax.train.objectives``: load a reference model?
build the gradient engine? supply a target batch?), the gradient engine
(``mixjax.mixing.grads``) and the guard all read these declarations; no other list of
statistic names exists. A new signal is one :func:`declare` call in the module
that needs it::

    from mixjax.mixing import statistics

    statistics.declare(
        "token_entropy", shape="f32[K]", attribution="domain", needs={"forward"},
        doc="mean per-token loss variance ...",
        compute=lambda ctx: my_reduction(ctx.token_loss, ctx.token_mask, ctx.domain_id,
                                         ctx.num_domains))
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Iterable, Mapping, Protocol

import jax
import jax.numpy as jnp

from mixjax.mixing import domain_stats

Array = jax.Array

ATTRIBUTIONS = ("domain", "sequence", "none")

# What computing a statistic can take. The step's factory provides each one.
NEEDS: Mapping[str, str] = {
    "forward": "the training batch's per-token losses (the full-batch forward pass)",
    "reference": "a frozen reference model (train.reference), run on the training batch",
    "gradient_engine": "per-domain gradients (mixjax.mixing.grads, the grads section)",
    "target_batch": "a target batch (grads.target's validation split) as batch['target_tokens']",
    "evaluation": "the host's latest per-domain evaluation (train.eval_every)",
    "routing": "the token routing of a mixture-of-experts model (model.kind=moe) on the "
               "training batch: one more forward pass, without a backward",
}


class StepContext(Protocol):
    """What :attr:`Statistic.compute` may read; built once per step, every field lazy.

    ``token_loss``/``token_mask`` f32[B,S] (the forward pass), ``domain_id`` i32[B],
    ``num_domains``, ``step`` i32[], ``sampling_weights`` f32[K], ``lr`` f32[],
    ``domain_loss``/``domain_count`` f32[K] (from the forward pass or, for a step
    whose model gradient comes from the engine, from the engine's own forward),
    ``sample_loss`` f32[B], ``ref_token_loss`` f32[B,S], ``grad_stats`` (the
    engine's answer, a dict), ``eval_loss`` f32[K] and ``routing`` (an MoE model's
    ``apply.routing`` on the batch: ``kept`` f32[L,B,E] tokens per MoE block, sequence and
    expert, ``dropped`` f32[L,B] assignments over capacity).
    """

    token_loss: Array
    token_mask: Array
    domain_id: Array
    num_domains: int
    step: Array
    sampling_weights: Array
    lr: Array
    domain_loss: Array
    domain_count: Array
    sample_loss: Array
    ref_token_loss: Array
    grad_stats: Mapping[str, Array]
    eval_loss: Array
    routing: Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class Statistic:
    name: str
    shape: str                                   # e.g. "f32[K]", "f32[B,S]", "f32[]"
    attribution: str                             # one of ATTRIBUTIONS
    needs: frozenset[str]                        # keys of NEEDS
    doc: str
    compute: Callable[[Any], Array]              # StepContext -> value


_REGISTRY: dict[str, Statistic] = {}
_DESCRIPTIONS: dict[str, str] = {}
# {name: "shape doc"} of every declared statistic, live (``mixing.STATS``).
DESCRIPTIONS: Mapping[str, str] = types.MappingProxyType(_DESCRIPTIONS)


def declare(name: str, *, shape: str, attribution: str, doc: str,
            compute: Callable[[Any], Array], needs: Iterable[str] = ()) -> Statistic:
    """Adds a statistic to the registry (a second declaration of a name is an error)."""
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"statistic {name!r}: attribution must be one of {ATTRIBUTIONS}, "
                         f"got {attribution!r}")
    needs = frozenset(needs)
    unknown = sorted(needs - set(NEEDS))
    if unknown:
        raise ValueError(f"statistic {name!r}: unknown needs {unknown}; known: {sorted(NEEDS)}")
    if name in _REGISTRY:
        raise ValueError(f"statistic {name!r} is declared twice")
    stat = Statistic(name, shape, attribution, needs, doc, compute)
    _REGISTRY[name] = stat
    _DESCRIPTIONS[name] = f"{shape} {doc}"
    return stat


def get(name: str) -> Statistic:
    if name not in _REGISTRY:
        raise KeyError(f"unknown statistic {name!r}; known: {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def check_known(requires: Iterable[str], who: str) -> None:
    """A clear error naming ``who`` (a mixer) and the statistics nobody declared."""
    unknown = sorted(set(requires) - set(_REGISTRY))
    if unknown:
        raise ValueError(f"{who} requires unknown statistics {unknown}; declared: {names()} "
                         "(mixjax.mixing.statistics.declare adds one)")


def needs_of(requires: Iterable[str]) -> frozenset[str]:
    """Everything computing ``requires`` takes (the union of their ``needs``)."""
    out: set[str] = set()
    for name in requires:
        out |= get(name).needs
    return frozenset(out)


def needing(need: str, among: Iterable[str] | None = None) -> frozenset[str]:
    """The statistics (of ``among``, default all) whose computation takes ``need``."""
    pool = _REGISTRY if among is None else among
    return frozenset(n for n in pool if need in get(n).needs)


def compute(requires: Iterable[str], ctx: Any) -> dict[str, Array]:
    """``{name: value}`` for ``requires`` plus the always-present ``loss`` and ``count``."""
    return {n: get(n).compute(ctx) for n in sorted(set(requires) | {"loss", "count"})}


# -- the guard's view ------------------------------------------------------------------------
def nonfinite_domains(requires: Iterable[str], stats: Mapping[str, Array],
                      num_domains: int) -> Array:
    """bool[K]: domains with a NaN/inf in a required statistic, by its ``attribution``."""
    k = num_domains
    bad = jnp.zeros((k,), bool)
    ids, mask = stats.get("domain_id"), stats.get("token_mask")
    for name in sorted(set(requires)):
        value = stats.get(name)
        if value is None or name not in _REGISTRY or value.ndim < 1:
            continue
        how = get(name).attribution
        if how == "domain" and value.shape[0] == k:
            bad = bad | ~jnp.all(jnp.isfinite(value.reshape(k, -1)), axis=1)
        elif how == "sequence" and ids is not None and value.shape[0] == ids.shape[0]:
            nonfinite = ~jnp.isfinite(value)
            if mask is not None and mask.shape == value.shape:
                nonfinite = nonfinite & (mask > 0)
            seq_bad = jnp.any(nonfinite.reshape(value.shape[0], -1), axis=1)
            member = ids[:, None] == jnp.arange(k)[None, :]
            bad = bad | jnp.any(member & seq_bad[:, None], axis=0)
    return bad


# -- the built-in statistics -------------------------------------------------------------------
def _engine(name: str) -> Callable[[Any], Array]:
    return lambda ctx: ctx.grad_stats[name]


declare("loss", shape="f32[K]", attribution="domain",
        doc="mean token loss per domain in this batch (0 where absent)",
        compute=lambda ctx: ctx.domain_loss)
declare("count", shape="f32[K]", attribution="domain",
        doc="number of loss tokens per domain in this batch",
        compute=lambda ctx: ctx.domain_count)
declare("token_loss", shape="f32[B,S]", attribution="sequence", needs={"forward"},
        doc="per-token training loss", compute=lambda ctx: ctx.token_loss)
declare("token_mask", shape="f32[B,S]", attribution="none",
        doc="1 for tokens that count in the loss", compute=lambda ctx: ctx.token_mask)
declare("domain_id", shape="i32[B]", attribution="none",
        doc="domain of each sequence", compute=lambda ctx: ctx.domain_id)
declare("sample_loss", shape="f32[B]", attribution="sequence", needs={"forward"},
        doc="mean token loss per sequence", compute=lambda ctx: ctx.sample_loss)
declare("ref_loss", shape="f32[K]", attribution="domain", needs={"reference"},
        doc="mean token loss per domain of the reference model",
        compute=lambda ctx: domain_stats.domain_mean(ctx.ref_token_loss, ctx.token_mask,
                                                     ctx.domain_id, ctx.num_domains)[0])
declare("ref_sample_loss", shape="f32[B]", attribution="sequence", needs={"reference"},
        doc="mean token loss per sequence of the reference model",
        compute=lambda ctx: domain_stats.sequence_means(ctx.ref_token_loss, ctx.token_mask)[0])
declare("ref_token_loss", shape="f32[B,S]", attribution="sequence", needs={"reference"},
        doc="per-token loss of the reference model", compute=lambda ctx: ctx.ref_token_loss)
declare("grad_dot", shape="f32[K]", attribution="domain",
        needs={"gradient_engine", "target_batch"},
        doc="inner products <g_i, g_target>", compute=_engine("grad_dot"))
declare("gram", shape="f32[K,K]", attribution="domain", needs={"gradient_engine"},
        doc="inner products <g_i, g_j>", compute=_engine("gram"))
declare("grad_norm", shape="f32[K]", attribution="domain", needs={"gradient_engine"},
        doc="per-domain gradient norms", compute=_engine("grad_norm"))
declare("target_grad_norm", shape="f32[]", attribution="none",
        needs={"gradient_engine", "target_batch"},
        doc="norm of the target gradient g_target (mixjax.mixing.grads)",
        compute=_engine("target_grad_norm"))
declare("target_loss", shape="f32[]", attribution="none",
        needs={"gradient_engine", "target_batch"},
        doc="mean token loss of the target batch, the value whose gradient is g_target "
            "(f32[T] with several targets; mixjax.mixing.grads)",
        compute=_engine("target_loss"))
# Per-example objectives (sample-level reweighting, aggregators over sequences): the
# per-sequence loss is ``sample_loss`` (L_b, the mean token loss of sequence b); the engine
# gives the B x B Gram of the per-sequence gradients g_b = grad L_b.
declare("example_gram", shape="f32[B,B]", attribution="sequence", needs={"gradient_engine"},
        doc="inner products <g_a, g_b> of the per-sequence gradients g_b = grad L_b "
            "(L_b = mean token loss of sequence b; memory B x params)",
        compute=_engine("example_gram"))
declare("eval_loss", shape="f32[K]", attribution="domain", needs={"evaluation"},
        doc="per-domain validation loss (latest evaluation)", compute=lambda ctx: ctx.eval_loss)
declare("sampling_weights", shape="f32[K]", attribution="domain",
        doc="the weights this batch was drawn with", compute=lambda ctx: ctx.sampling_weights)
declare("lr", shape="f32[]", attribution="none", doc="current learning rate",
        compute=lambda ctx: ctx.lr)


def _domain_sum(per_seq, domain_id, num_domains):
    """``x[L,B,...]`` summed over the sequences of each domain -> ``[K,L,...]``."""
    member = (domain_id[:, None] == jnp.arange(num_domains)[None, :]).astype(per_seq.dtype)
    return jnp.einsum("bk,lb...->kl...", member, per_seq)


declare("expert_routing", shape="f32[K,L,E]", attribution="domain", needs={"routing"},
        doc="tokens each expert of each MoE block kept from each domain's sequences in this "
            "batch (mixjax.models.moe; pad positions are routed too)",
        compute=lambda ctx: _domain_sum(ctx.routing["kept"], ctx.domain_id, ctx.num_domains))
declare("expert_dropped", shape="f32[K,L]", attribution="domain", needs={"routing"},
        doc="routing assignments dropped at expert capacity per domain and MoE block",
        compute=lambda ctx: _domain_sum(ctx.routing["dropped"], ctx.domain_id,
                                        ctx.num_domains))
