"""Fish: gradient matching across domains by a first-order meta update.

Shi et al., "Gradient Matching for Domain Generalization", ICLR 2022,
arXiv 2104.09937. Fish approximates the inter-domain gradient matching
objective (IDGM)::

    min_theta  mean_d L_d(theta) - gamma * 2/(S(S-1)) * sum_{i<j} <grad L_i, grad L_j>

by a Reptile-like step. One *meta step*, following the official code
(``YugeTen/fish: src/utils.py fish_step``; dg-algorithms.md section 4)::

    theta~ <- theta                       (clone; the inner optimiser state is carried
                                           over from the previous meta step)
    for d in the M domains, in a random order:
        theta~ <- inner_opt_step(theta~, grad L_d(theta~))
    theta <- theta + (meta_lr / M) * (theta~ - theta)

``divide_by_meta_steps=False`` gives DomainBed's variant ``theta += meta_lr *
(theta~ - theta)`` (its default meta_lr 0.5). The official runs start with
``pretrain_iters`` plain ERM steps; that schedule belongs to the caller.

Everything is pure and jittable and knows models only through a loss
function, so both the LM side (:func:`fish_lm_step`, text domains of one
stratified batch) and the DG side (``mixjax.dg``, image domains) use it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax.methods.base import (Method, MethodContext, StepParts, first_nonfinite, register,
                                 require_per_domain, step_metrics, token_loss_fn)
from mixjax.mixing import domain_stats
from mixjax.mixing import grads as G
from mixjax.core import state as state_lib

PyTree = Any


def fish_step(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, inner_opt_state: PyTree,
              inner_tx: optax.GradientTransformation, domain_batches: Any, *, meta_lr: float,
              divide_by_meta_steps: bool = True):
    """One Fish meta step over ``domain_batches`` (a pytree with leading axis M, one per domain).

    ``loss_fn(params, batch) -> scalar``. The inner loop visits the domains in
    the order of the leading axis (shuffle before calling). Returns
    ``(new_params, new_inner_opt_state, inner_losses f32[M])``.
    """
    m = jax.tree.leaves(domain_batches)[0].shape[0]

    def inner(carry, b):
        p, o = carry
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        upd, o = inner_tx.update(g, o, p)
        return (optax.apply_updates(p, upd), o), loss

    (p_tilde, inner_opt_state), losses = jax.lax.scan(inner, (params, inner_opt_state),
                                                      domain_batches)
    scale = meta_lr / m if divide_by_meta_steps else meta_lr
    new_params = jax.tree.map(lambda t, s: (t + scale * (s - t)).astype(t.dtype), params, p_tilde)
    return new_params, inner_opt_state, losses


def fish_lm_step(token_loss_fn: G.TokenLossFn, params: PyTree, inner_opt_state: PyTree,
                 inner_tx: optax.GradientTransformation, batch: Mapping[str, jax.Array],
                 rng: jax.Array, *, num_domains: int, meta_lr: float,
                 divide_by_meta_steps: bool = True, blocked: bool = False):
    """Fish on text domains: the K domains of one stratified batch, in a random order.

    The batch must hold exactly B/K sequences per domain (``grads.check_stratified``);
    each inner step uses one domain's mean token loss.
    """
    sub = G.stratify(batch, num_domains, blocked=blocked)     # [K, B/K, ...]
    order = jax.random.permutation(rng, num_domains)
    sub = jax.tree.map(lambda v: v[order], sub)

    def loss_fn(p, one):
        tl, tm = token_loss_fn(p, one)
        tm = tm.astype(jnp.float32)
        return (tl.astype(jnp.float32) * tm).sum() / jnp.maximum(tm.sum(), 1.0)

    new_params, inner_opt_state, losses = fish_step(
        loss_fn, params, inner_opt_state, inner_tx, sub, meta_lr=meta_lr,
        divide_by_meta_steps=divide_by_meta_steps)
    # Report the inner losses in domain order.
    domain_losses = jnp.zeros((num_domains,), jnp.float32).at[order].set(losses)
    return new_params, inner_opt_state, domain_losses


@register
class FishMethod(Method):
    """Fish on the K text domains of each batch (``train.objective=fish``).

    One train step = one meta step (:func:`fish_lm_step`): K inner AdamW steps
    (one per domain, random order from ``fold_in(rng, step)``), then
    ``θ += meta_lr (θ̃ − θ)`` (``/K`` with ``divide_by_meta_steps``). The inner
    optimiser (``optim`` section) makes K updates per train step, so its
    schedule spans ``K * train.steps`` updates (``optim.warmup_steps`` counts
    inner updates). ``opt_state`` is the inner optimiser's, carried across meta
    steps as in the official code. Needs ``data.sampler=per_domain``. Logged:
    ``domain_loss`` = each domain's inner loss (at the iterate its inner step
    started from), ``grad_norm`` = ‖θ̃ − θ‖ / scale (the meta direction).
    """

    name = "fish"
    hparams = {"meta_lr": 0.5, "divide_by_meta_steps": False}

    def check(self, hp) -> None:
        if not hp["meta_lr"] > 0:
            raise ValueError(f"fish meta_lr must be > 0, got {hp['meta_lr']}")
        if not isinstance(hp["divide_by_meta_steps"], bool):
            raise ValueError("fish divide_by_meta_steps must be True or False, got "
                             f"{hp['divide_by_meta_steps']!r}")

    def build(self, ctx: MethodContext, hp) -> StepParts:
        cfg, k = ctx.cfg, ctx.num_domains
        require_per_domain(cfg, "train.objective='fish'")
        tx, schedule = state_lib.make_optimizer(cfg.optim, k * ctx.schedule_steps)
        view = ctx.mixer   # uniform: the sampler's stratified batches, every domain equal
        loss_fn = token_loss_fn(ctx)
        meta_lr, divide = float(hp["meta_lr"]), bool(hp["divide_by_meta_steps"])
        pad_id = ctx.pad_id

        def init_fn(params):
            return state_lib.new_state(params, tx.init(params), view.init(k), k, cfg.train.seed)

        def step_fn(state, batch, frozen=None):
            del frozen
            params, step = state.params, state.step
            rng = jax.random.fold_in(state.rng, step)
            new_params, opt_state, inner = fish_lm_step(
                loss_fn, params, state.opt_state, tx,
                {"tokens": batch["tokens"], "domain_id": batch["domain_id"]}, rng,
                num_domains=k, meta_lr=meta_lr, divide_by_meta_steps=divide,
                blocked=ctx.blocked_batches)
            mask = (batch["tokens"][:, 1:] != pad_id).astype(jnp.float32)
            _, count = domain_stats.domain_totals(mask, mask, batch["domain_id"], k)
            scale = meta_lr / k if divide else meta_lr
            meta_norm = optax.tree.norm(jax.tree.map(
                lambda a, b: (a - b).astype(jnp.float32), new_params, params)) / scale
            bad = first_nonfinite(inner)
            mix_state = {**state.mix_state, "nonfinite_domain": bad}
            metrics = step_metrics(
                step=step, domain_loss=inner, domain_count=count,
                weights=view.weights(mix_state), sampling_weights=batch["sampling_weights"],
                grad_norm=meta_norm, nonfinite_domain=bad,
                lr=schedule(step * k))   # inner lr at this meta step's first inner update
            new_state = state.replace(params=new_params, opt_state=opt_state,
                                      mix_state=mix_state, step=step + 1)
            return new_state, metrics

        return StepParts(step_fn=step_fn, init_fn=init_fn, weights=view, weights_move=False,
                         stratified=True)
