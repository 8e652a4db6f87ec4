"""The Method protocol: everything that defines a train step.

A run trains by one Method, named by ``train.objective`` (default ``mixer``; the key
keeps its first name so that stored run dirs and their config hashes stay valid). The
run loop (``mixjax.train.loop``) knows nothing of any Method: it drives
``step(state, batch, frozen) -> (state, metrics)`` over one
:class:`~mixjax.core.state.TrainState` (donated) and optional
:class:`~mixjax.core.state.FrozenInputs` (not donated). A Method declares

* ``name`` and ``hparams`` (its hyperparameters with their defaults, set by
  ``train.objective_hparams``) and ``check(hp)``, which config validation calls
  before anything is built;
* ``uses_mixer``: True when the ``mixing`` section's mixer sets the weights
  (the default step); False when the Method owns them (the mixing section
  must then stay at its defaults);
* ``build(ctx, hp) -> StepParts``: its state (``init_fn``), its step, the
  view the loop reads its weights through, and what its batches need.

The contract every step honours, so that the loop needs no per-method code:

* the state's ``params`` is the model that is evaluated (``opt_state`` its
  optimiser state); ``mix_state`` is read by ``parts.weights.weights``; a
  Method's own arrays go in ``extra`` (params-shaped subtrees are sharded like
  the model, the rest replicated). The whole state is checkpointed.
* ``metrics`` is built by :func:`step_metrics` (one function, every Method):
  ``step``, ``objective``, ``loss``, ``tokens``, ``domain_loss`` f32[K],
  ``domain_count`` f32[K], ``weights`` f32[K], ``sampling_weights`` f32[K],
  ``grad_norm``, ``nonfinite_domain`` i32[] (-1: none), optionally ``lr`` and
  ``extra`` ({name: scalar}, written to metrics.jsonl as is).
* ``batch`` holds ``tokens``, ``domain_id``, ``sampling_weights`` and, when
  ``needs_target``, ``target_tokens`` (the validation split of ``grads.target``).

Adding a Method is one module in this package: a class decorated with
:func:`register`. The package imports every module in it (``mixjax.methods``),
so no central list is edited. ``docs/extending.md`` walks through one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Protocol

import jax

from mixjax.errors import ConfigError
from mixjax.registry import ClassRegistry
from mixjax.core.contract import METRIC_KEYS, first_nonfinite, step_metrics  # noqa: F401


class WeightsView(Protocol):
    """What the loop reads a Method's domain weights through. A mixer
    (:class:`mixjax.mixing.Mixer`) is one; a Method that owns its weights
    gives a :class:`OwnWeights`."""

    name: str
    apply_to: str            # sampling | loss | both: whether the sampler follows the weights
    requires: frozenset      # statistics the step computes for it (mixjax.mixing.statistics)
    # The hooks the loop reads besides (mixjax.mixing.Mixer documents them): whether
    # grads.target may be a list, and the on-demand evaluations (None or done -> bool).
    multi_target: bool
    wants_eval: Callable[[Any], Any] | None

    def weights(self, mix_state) -> jax.Array: ...

    def average(self, mix_state) -> jax.Array: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class OwnWeights:
    """The weights of a Method that updates them in its own step, read from
    ``mix_state["weights"]`` (the layout :func:`mixjax.mixing.init_state` /
    :func:`mixjax.mixing.record_weights` keep). ``apply_to="loss"`` keeps the
    sampler at its initial weights."""

    name: str
    apply_to: str = "loss"
    requires: frozenset = frozenset()
    multi_target: bool = False
    wants_eval: Callable[[Any], Any] | None = None

    def weights(self, mix_state):
        return mix_state["weights"]

    def average(self, mix_state):
        return mix_state["weight_sum"] / mix_state["num_weights"]


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a Method builds its step from (the trainer, or a proxy swarm, fills it)."""

    cfg: Any                           # mixjax.config.Config
    domains: tuple[str, ...]
    apply: Callable                    # the model: apply(params, tokens) -> logits
    pad_id: int
    tx: Any                            # the optim section's optimiser over schedule_steps
    schedule: Callable | None          # its learning-rate schedule (None: not logged)
    schedule_steps: int
    mixer: Any                         # the mixing section's mixer (built and checked)
    # () -> (apply, params) of the train.reference model; called only by a Method that needs it
    load_reference: Callable[[], tuple[Callable, Any]] | None = None
    # A step with StepParts.stratified receives its rows grouped by domain id (the trainer
    # orders them on the host, mixjax.mixing.grads.block_rows): no device-side sort needed.
    blocked_batches: bool = False

    @property
    def num_domains(self) -> int:
        return len(self.domains)


@dataclasses.dataclass(frozen=True)
class StepParts:
    """What :meth:`Method.build` returns."""

    step_fn: Callable                  # unjitted (state, batch, frozen=None) -> (state, metrics)
    init_fn: Callable                  # params -> TrainState (jitted, sharded, by the caller)
    weights: WeightsView               # how the loop reads the weights
    weights_move: bool = True          # False: fixed at init (the loop never waits for them)
    needs_target: bool = False         # batch["target_tokens"] from grads.target
    stratified: bool = False           # exactly B/K rows per domain, checked per batch
    frozen: Any = None                 # FrozenInputs (a reference model), never donated


class Method:
    """A way of training: declares its hyperparameters and builds its step (module docstring)."""

    name: ClassVar[str] = ""
    hparams: ClassVar[Mapping[str, Any]] = {}
    uses_mixer: ClassVar[bool] = False

    def check(self, hp: Mapping[str, Any]) -> None:
        """Raises ValueError/TypeError naming a bad hyperparameter (``hp`` has every key)."""

    def build(self, ctx: MethodContext, hp: Mapping[str, Any]) -> StepParts:
        raise NotImplementedError


_METHODS = ClassRegistry("method")
register = _METHODS.register       # class decorator: selectable as ``train.objective=cls.name``
names = _METHODS.names


def get(name: str) -> Method:
    return _METHODS.get(name)()


def resolved_hparams(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The Method's defaults overridden by ``given``; an unknown name is a TypeError."""
    known = dict(get(name).hparams)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"method {name!r} has no hyperparameter(s) {unknown}; "
                        f"known: {sorted(known)}")
    return {**known, **given}


def build(name: str, ctx: MethodContext, given: Mapping[str, Any] = ()) -> StepParts:
    method = get(name)
    hp = resolved_hparams(name, dict(given))
    method.check(hp)
    return method.build(ctx, hp)


def token_loss_fn(ctx: MethodContext) -> Callable:
    """``(params, batch) -> (token losses f32[B, S], mask f32[B, S])`` of the context's model."""
    from mixjax.core import step as step_lib
    apply, pad_id = ctx.apply, ctx.pad_id

    def loss_fn(params, batch):
        return step_lib.token_losses(apply, params, batch["tokens"], pad_id,
                                     batch.get("domain_id"))

    return loss_fn


def require_per_domain(cfg, who: str, alternative: str = "") -> None:
    """``data.sampler=per_domain`` (exactly B/K rows per domain), or a ConfigError."""
    if cfg.data.sampler != "per_domain":
        raise ConfigError(f"config key 'data.sampler': {who} needs exactly B/K sequences per "
                          f"domain; use data.sampler=per_domain{alternative}")
