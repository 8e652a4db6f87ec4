"""The model registry: ``model.kind`` names a builder; the run is built from what it returns.

A model kind is one module that registers a builder::

    from mixjax.models import registry

    @registry.register("my_lm", axis_rules={"expert": None})
    def build(model_cfg, vocab_size) -> registry.ModelSpec:
        ...   # model_cfg: the run's ``model`` section (kind-specific knobs in model.hparams)
        return registry.ModelSpec(config=..., init=init, apply=apply,
                                  abstract_params=..., logical_axes=...)

What the rest of mixjax relies on (the trainer, evaluation, reference models, sharding):

* ``apply(params, tokens i32[B,S]) -> logits f32[B,S,V]``: a pure causal LM (logits at
  position t may depend on tokens[:, :t+1] only); the step's loss is
  ``CE(apply(params, x[:, :-1]), x[:, 1:])`` (``mixjax.core.step.token_losses``);
* ``init(seed) -> params``: a pure function of ``seed``, run inside one jitted call with
  ``out_shardings`` so that every parameter is born in its shards
  (``mixjax.parallel.sharding.init_state_sharded``);
* ``abstract_params``: the params' ``jax.ShapeDtypeStruct`` tree (checkpoint restore,
  parameter count), and ``logical_axes``: the same tree with a tuple of logical axis names
  per leaf (one per dimension, ``None`` = never sharded). Names map to mesh axes through
  ``mixjax.parallel.sharding.RULES``; a kind with names of its own declares their mesh axis
  in ``axis_rules`` (added to the rules at registration; a clash is an error).

Names are resolved when the run is built or validated (``config.validate`` calls
:func:`check`), never when a config is loaded. The built-in ``transformer`` is registered
here by name and imported only when built, as are ``moe`` (``mixjax.models.moe``) and ``demix`` (``mixjax.models.demix``). A new kind is registered by importing its module
before the run is built (your launcher), like mixers and Methods; docs/extending.md
section 5 is a worked example (a one-layer MLP-mixer LM) that a test trains.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

Params = Any
Builder = Callable[[Any, int], "ModelSpec"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a builder returns (see the module docstring)."""

    config: Any                                   # the kind's own architecture config
    init: Callable[[int], Params]                 # seed -> params (pure)
    apply: Callable[[Params, Any], Any]           # (params, tokens i32[B,S]) -> logits
    abstract_params: Params                       # ShapeDtypeStruct tree
    logical_axes: Params                          # tuple of logical names per leaf

    @property
    def num_params(self) -> int:
        import jax
        import numpy as np
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_params)))


_BUILDERS: dict[str, Builder] = {}


def register(kind: str, *, axis_rules: dict[str, Any] | None = None):
    """Decorator: ``builder(model_cfg, vocab_size) -> ModelSpec`` becomes ``model.kind=kind``.

    ``axis_rules``: ``{logical name: mesh axis or None}`` for names the built-in rules lack.
    """

    def deco(builder: Builder) -> Builder:
        if kind in _BUILDERS and _BUILDERS[kind] is not builder:
            raise ValueError(f"model kind {kind!r} is registered twice")
        if axis_rules:
            from mixjax.parallel import sharding
            sharding.declare_axes(axis_rules, who=f"model kind {kind!r}")
        _BUILDERS[kind] = builder
        return builder

    return deco


def names() -> list[str]:
    return sorted(_BUILDERS)


def check(kind: str) -> None:
    """``KeyError`` naming the known kinds when ``kind`` is not registered."""
    if kind not in _BUILDERS:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(names())} "
                       "(mixjax.models.registry.register adds one; import its module before "
                       "the run is built)")


def build(model_cfg: Any, vocab_size: int) -> ModelSpec:
    """The :class:`ModelSpec` of ``model_cfg.kind`` (default ``transformer``) for a vocabulary.

    Raises ``KeyError`` for an unknown kind and ``ValueError``/``TypeError`` for bad
    hyperparameters (the trainer reports them as config errors).
    """
    kind = getattr(model_cfg, "kind", "transformer")
    check(kind)
    spec = _BUILDERS[kind](model_cfg, vocab_size)
    _check_axes(kind, spec)
    return spec


def _check_axes(kind: str, spec: ModelSpec) -> None:
    """Every leaf has one logical name per dimension, and every name has a sharding rule."""
    import jax
    from mixjax.parallel import sharding

    known = {name for name, _ in sharding.RULES}
    is_names = lambda x: isinstance(x, tuple)   # noqa: E731
    leaves = jax.tree.leaves(spec.abstract_params)
    axes = jax.tree.leaves(spec.logical_axes, is_leaf=is_names)
    if jax.tree.structure(spec.abstract_params) != jax.tree.structure(
            jax.tree.map(lambda _: 0, spec.logical_axes, is_leaf=is_names)):
        raise ValueError(f"model kind {kind!r}: logical_axes must mirror the params tree")
    for leaf, names_ in zip(leaves, axes):
        if len(names_) != len(leaf.shape):
            raise ValueError(f"model kind {kind!r}: a parameter of shape {leaf.shape} has "
                             f"logical axes {names_} (one name per dimension)")
        unknown = [n for n in names_ if n is not None and n not in known]
        if unknown:
            raise ValueError(f"model kind {kind!r}: logical axes {unknown} have no sharding "
                             f"rule; declare them with register(..., axis_rules=...)")


# -- the built-in kind --------------------------------------------------------------------------
def transformer_config(model_cfg: Any, vocab_size: int):
    """The ``TransformerConfig`` of a ``model`` section (the vocabulary comes from the data)."""
    from mixjax.models.transformer import TransformerConfig
    arch = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(TransformerConfig)
            if f.name != "vocab_size" and hasattr(model_cfg, f.name)}
    return TransformerConfig(vocab_size=vocab_size, **arch)


@register("transformer")
def _transformer(model_cfg: Any, vocab_size: int) -> ModelSpec:
    from mixjax.models import transformer
    if getattr(model_cfg, "hparams", None):
        raise ValueError(f"model kind 'transformer' takes its knobs as model.* keys, not "
                         f"model.hparams (got {sorted(model_cfg.hparams)})")
    tcfg = transformer_config(model_cfg, vocab_size)
    apply, abstract, axes = transformer.abstract_init(tcfg)
    return ModelSpec(config=tcfg, init=lambda seed: transformer.init_params(tcfg, seed),
                     apply=apply, abstract_params=abstract, logical_axes=axes)


@register("moe")
def _moe(model_cfg: Any, vocab_size: int) -> ModelSpec:
    """The mixture-of-experts transformer (``mixjax.models.moe``; knobs in model.hparams)."""
    from mixjax.models import moe
    cfg = moe.config_from(model_cfg, vocab_size)
    apply, abstract, axes = moe.abstract_init(cfg)
    return ModelSpec(config=cfg, init=lambda seed: moe.init_params(cfg, seed),
                     apply=apply, abstract_params=abstract, logical_axes=axes)


@register("demix")
def _demix(model_cfg: Any, vocab_size: int) -> ModelSpec:
    """DEMix domain-expert layers (``mixjax.models.demix``; knobs in model.hparams)."""
    from mixjax.models import demix
    cfg = demix.config_from(model_cfg, vocab_size)
    apply, abstract, axes = demix.abstract_init(cfg)
    return ModelSpec(config=cfg, init=lambda seed: demix.init_params(cfg, seed),
                     apply=apply, abstract_params=abstract, logical_axes=axes)


def check_hparams(model_cfg: Any) -> None:
    """A kind's cheap hyperparameter check before anything is loaded or compiled (raises
    ``ValueError`` naming the key); kinds without one are checked when built."""
    kind = getattr(model_cfg, "kind", "transformer")
    if kind == "moe":
        from mixjax.models import moe
        moe.config_from(model_cfg, vocab_size=8)
    elif kind == "demix":
        from mixjax.models import demix
        demix.config_from(model_cfg, vocab_size=8)
