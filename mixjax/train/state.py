"""The train state pytree, the optimiser and its learning-rate schedule.

``state`` is one dict (see ``mixjax.train.step``)::

    {"params", "opt_state", "mix_state", "step", "rng", "eval_loss"[, "ref_params"]}

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

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
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


def make_optimizer(cfg: OptimConfig, total_steps: int):
    """``(tx, schedule)``: clip -> AdamW with the schedule."""
    schedule = lr_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay,
                             mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    return optax.chain(*parts), schedule


def init_state(params, tx: optax.GradientTransformation, mixer: mixing.Mixer, num_domains: int,
               seed: int, ref_params: Any = None) -> dict:
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "mix_state": mixer.init(num_domains),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.PRNGKey(seed),
        "eval_loss": jnp.zeros((num_domains,), jnp.float32),
    }
    # Distinct buffers per leaf: the step donates the state, and a buffer shared by two
    # leaves (e.g. the mixer's initial weights and weight_sum) cannot be donated twice.
    state = jax.tree.map(jnp.copy, state)
    if ref_params is not None:
        state["ref_params"] = ref_params
    return state
