"""The typed train state, the optimiser and its learning-rate schedule.

:class:`TrainState` (a ``flax.struct`` dataclass, a pytree) holds what a step
updates and a checkpoint saves::

    params      the model that is evaluated (sharded by the logical rules)
    opt_state   its optimiser state (mirrors params' sharding)
    mix_state   the mixer's (or method's) weights state, replicated
    step        i32[] completed steps
    rng         u32[2]; per-step randomness is fold_in(rng, step)
    eval_loss   f32[K] latest per-domain validation loss (the host replaces it
                after an evaluation on the eval_every grid: ``state.replace``)
    extra       a method's own arrays ({} for the mixer step; bilevel: the lower
                model and its optimiser state); params-shaped subtrees are
                sharded like params, the rest replicated

Frozen inputs (a reference model) are not state: they are :class:`FrozenInputs`,
the step's third, non-donated argument, never checkpointed.

Checkpoint layout (:meth:`TrainState.to_tree`): the flat dict ``{params,
opt_state, mix_state, step, rng, eval_loss, **extra}``, the layout checkpoints
had before the state was typed, so those restore unchanged.

Learning rate (``optim``): linear warmup from 0 to ``lr`` over
``warmup_steps``, then over the remaining steps either

    cosine:   lr_t = lr * (m + (1 - m) * (1 + cos(pi * u)) / 2)
    linear:   lr_t = lr * (1 - (1 - m) * u)
    constant: lr_t = lr

with ``u`` in [0, 1] the fraction of the decay phase done and ``m =
min_lr_ratio``. The optimiser is AdamW (Loshchilov & Hutter 2019, arXiv
1711.05101) after global-norm clipping; weight decay applies to matrices only
(not to norm scales).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mixjax import mixing


def lr_schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.decay == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.decay == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def make_optimizer(cfg, total_steps: int):
    """``(tx, schedule)`` from an ``optim`` section (:class:`mixjax.config.OptimConfig`):
    clip -> AdamW with the schedule."""
    schedule = lr_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay,
                             mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    return optax.chain(*parts), schedule


@flax.struct.dataclass
class TrainState:
    """The train state (see the module docstring)."""

    params: Any
    opt_state: Any
    mix_state: Any
    step: Any
    rng: Any
    eval_loss: Any
    extra: Mapping[str, Any] = flax.struct.field(default_factory=dict)

    FIELDS = ("params", "opt_state", "mix_state", "step", "rng", "eval_loss")

    def to_tree(self) -> dict:
        """The checkpoint layout: the typed fields and ``extra``'s keys in one flat dict."""
        clash = sorted(set(self.extra) & set(self.FIELDS))
        if clash:
            raise ValueError(f"TrainState.extra keys {clash} clash with the state's fields")
        return {**{f: getattr(self, f) for f in self.FIELDS}, **dict(self.extra)}

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> "TrainState":
        """Inverse of :meth:`to_tree`."""
        missing = sorted(set(cls.FIELDS) - set(tree))
        if missing:
            raise KeyError(f"train state lacks {missing}")
        return cls(**{f: tree[f] for f in cls.FIELDS},
                   extra={k: v for k, v in tree.items() if k not in cls.FIELDS})


@flax.struct.dataclass
class FrozenInputs:
    """What a step reads but never updates: passed as its own, non-donated argument."""

    ref_params: Any = None   # a frozen reference model (reference-loss mixers)


def new_state(params, opt_state, mix_state, num_domains: int, seed: int,
              extra: Mapping[str, Any] | None = None) -> TrainState:
    """A fresh state at step 0, every leaf its own buffer (the step donates the state,
    and a buffer shared by two leaves, e.g. a mixer's initial ``weights`` and
    ``weight_sum``, cannot be donated twice)."""
    state = TrainState(params=params, opt_state=opt_state, mix_state=mix_state,
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed),
                       eval_loss=jnp.zeros((num_domains,), jnp.float32),
                       extra=dict(extra or {}))
    return jax.tree.map(jnp.copy, state)


def init_state(params, tx: optax.GradientTransformation, mixer: mixing.Mixer, num_domains: int,
               seed: int) -> TrainState:
    """The mixer step's state: ``params``, ``tx.init(params)``, ``mixer.init(K)``."""
    return new_state(params, tx.init(params), mixer.init(num_domains), num_domains, seed)
