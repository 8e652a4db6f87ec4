"""Bilevel domain reweighting, ScaleBiO-style: first-order penalty (minimax) form.

Pan et al., "ScaleBiO: Scalable Bilevel Optimization for LLM Data
Reweighting", ACL 2025, arXiv 2406.19976; reference code
``2003pro/ScaleBiO: python/minmax.py`` (mixing-algorithms.md section 7).

Domain weights ``lambda = softmax(p)`` over K domains; two copies of the model
parameters, ``u`` (lower level) and ``w`` (upper level)::

    L2(theta, p) = sum_d softmax(p)_d L_d(theta)      (train loss; L_d = domain d's mean
                                                        token loss, absent domains drop out)
    L1(w)        = mean token loss of a validation (target) batch
    min_{w, p} max_u  L1(w) + a * [L2(w, p) - L2(u, p)]

One step, all three updates in ONE compiled function, gradients taken at the
current ``(u, w, p)`` (as the reference computes all three before stepping
``p``)::

    u <- opt_u(u, a * grad_u L2(u, p))                 (u descends a*L2: the reference's
                                                        maximiser of -a*L2(u, p))
    w <- opt_w(w, a * grad_w L2(w, p) + grad_w L1(w))  (same training samples as u)
    p <- opt_p(p, a * grad_p [L2(w, p) - L2(u, p)])
       = a * J_softmax(p)^T (L(w) - L(u))             (L(.) = the vector of L_d)

Defaults from ``run_gpt2.sh``: a = 10, lr_u = lr_w = 1e-5, lr_p = 1e-2
(optimisers are the caller's optax transforms; the reference uses AdamW, with
weight decay 5e-4 on w). Not reproduced: the outer penalty schedule
(``alpha *= tau`` with ``lr * tau^-i``; fixed ``a`` here) and LISA layer
freezing. The learned weights are ``softmax(p)``; the model is ``w``.

Cost per step: the forward + backward of the training batch on u and on w and
of the validation batch on w (3 fwd+bwd), memory 2 models + 2 optimiser states.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.methods.base import (Method, MethodContext, OwnWeights, StepParts, first_nonfinite,
                                 register, step_metrics, token_loss_fn)
from mixjax.mixing import grads as G
from mixjax.core import state as state_lib

PyTree = Any


UWP_KEYS = ("u", "w", "p", "opt_u", "opt_w", "opt_p")


def penalty_update(loss_vec, coeffs, uwp: Mapping[str, Any], val: Mapping[str, jax.Array],
                   token_loss_fn: G.TokenLossFn, *, tx_u: optax.GradientTransformation,
                   tx_w: optax.GradientTransformation, tx_p: optax.GradientTransformation,
                   penalty: float):
    """The ScaleBiO step for any upper variable ``p`` that weights a vector of losses.

    ``loss_vec(params) -> (L f32[N], aux)``: the training losses (K domain means, or B
    sequence means); ``coeffs(p, aux_w) -> c f32[N]``: their weights, so that
    ``L2(theta, p) = c(p) . L(theta)`` (``aux_w``: the aux of ``loss_vec`` at w, e.g. the
    features an instance net scores; c is treated as a constant of theta). Then::

        u <- opt_u(u, a * J_L(u)^T c)
        w <- opt_w(w, a * J_L(w)^T c + grad L1(w))
        p <- opt_p(p, a * J_c(p)^T (L(w) - L(u)))

    every gradient taken at the current (u, w, p). Returns ``(new uwp, parts)`` with
    ``parts = {lw, lu, aux_w, c, gp, val_loss, grad_norm_w}`` (``c`` at the old p).
    """
    lu, pull_u, _ = jax.vjp(loss_vec, uwp["u"], has_aux=True)
    lw, pull_w, aux_w = jax.vjp(loss_vec, uwp["w"], has_aux=True)
    aux_w = jax.lax.stop_gradient(aux_w)
    c, pull_p = jax.vjp(lambda p: coeffs(p, aux_w), uwp["p"])
    l1, g1 = jax.value_and_grad(lambda w: G.mean_loss(token_loss_fn, w, val))(uwp["w"])
    cot = jax.lax.stop_gradient(penalty * c)
    gu = pull_u(cot)[0]
    gw = jax.tree.map(jnp.add, pull_w(cot)[0], g1)
    gp = pull_p(penalty * jax.lax.stop_gradient(lw - lu))[0]

    upd_u, opt_u = tx_u.update(gu, uwp["opt_u"], uwp["u"])
    upd_w, opt_w = tx_w.update(gw, uwp["opt_w"], uwp["w"])
    upd_p, opt_p = tx_p.update(gp, uwp["opt_p"], uwp["p"])
    new = {"u": optax.apply_updates(uwp["u"], upd_u), "w": optax.apply_updates(uwp["w"], upd_w),
           "p": optax.apply_updates(uwp["p"], upd_p), "opt_u": opt_u, "opt_w": opt_w,
           "opt_p": opt_p}
    parts = {"lw": lw, "lu": lu, "aux_w": aux_w, "c": c, "gp": gp, "val_loss": l1,
             "grad_norm_w": optax.tree.norm(gw)}
    return new, parts


def penalty_state(params, p, k: int, seed: int, *, tx_w, tx_u, tx_p):
    """The run state of a penalty-engine Method: w = ``params`` (the evaluated model), the lower
    copy u and its optimizer state in ``extra``, the upper variable ``p`` and its optimizer
    state in the mix state (uniform weights over the ``k`` domains to start)."""
    mix_state = mixing.init_state(jnp.full((k,), 1.0 / k, jnp.float32), logits=p,
                                  logits_opt_state=tx_p.init(p))
    return state_lib.new_state(params, tx_w.init(params), mix_state, k, seed,
                               extra={"lower_params": params, "lower_opt_state": tx_u.init(params)})


def penalty_uwp(state) -> dict:
    """``{u, w, p, opt_u, opt_w, opt_p}`` of a :func:`penalty_state` run state."""
    ms = state.mix_state
    return {"u": state.extra["lower_params"], "w": state.params, "p": ms["logits"],
            "opt_u": state.extra["lower_opt_state"], "opt_w": state.opt_state,
            "opt_p": ms["logits_opt_state"]}


def bilevel_update(token_loss_fn: G.TokenLossFn, uwp: Mapping[str, Any],
                   batch: Mapping[str, jax.Array], *, num_domains: int,
                   tx_u: optax.GradientTransformation, tx_w: optax.GradientTransformation,
                   tx_p: optax.GradientTransformation, penalty: float):
    """One ScaleBiO step on ``uwp = {u, w, p, opt_u, opt_w, opt_p}`` (pure; see the module
    docstring). Returns ``(new uwp, metrics)``; ``metrics["weights"]`` = softmax(new p).

    :class:`BilevelMethod`'s step keeps u, w and p in the train state's layout.
    """
    k = num_domains
    lam = jax.nn.softmax(uwp["p"])

    def loss_vec(params):
        return G.domain_loss_vector(token_loss_fn, params, batch, k)

    new, m = penalty_update(loss_vec, lambda p, _: jax.nn.softmax(p), uwp,
                            G.target_batch(batch), token_loss_fn, tx_u=tx_u, tx_w=tx_w,
                            tx_p=tx_p, penalty=penalty)
    lw, lu = m["lw"], m["lu"]
    metrics = {"val_loss": m["val_loss"], "L2_w": jnp.dot(lam, lw), "L2_u": jnp.dot(lam, lu),
               "domain_loss": lw, "domain_loss_u": lu, "domain_count": m["aux_w"],
               "weights": jax.nn.softmax(new["p"]), "grad_p": m["gp"],
               "grad_norm_w": m["grad_norm_w"]}
    return new, metrics


@register
class BilevelMethod(Method):
    """ScaleBiO in the train state's layout (``train.objective=bilevel``)::

        params = w (upper level, evaluated), opt_state = opt_w
        extra = {lower_params: u, lower_opt_state: opt_u}
        mix_state = {weights = softmax(p), weight_sum, num_weights, nonfinite_domain,
                     logits = p, logits_opt_state = opt_p}

    w and u use the ``optim`` section's AdamW and schedule (``lower_lr`` sets
    u's peak lr; None = optim.lr, the reference's lr_u = lr_w); p uses Adam
    with the constant ``lr_p``. The validation batch L1 is ``grads.target``'s
    validation split. The sampler keeps its initial weights (softmax(p) weights
    the loss, as in the reference).
    """

    name = "bilevel"
    hparams = {"penalty": 10.0, "lr_p": 1e-2, "lower_lr": None}

    def check(self, hp) -> None:
        if not hp["penalty"] > 0:
            raise ValueError(f"bilevel penalty must be > 0, got {hp['penalty']}")
        if not hp["lr_p"] > 0:
            raise ValueError(f"bilevel lr_p must be > 0, got {hp['lr_p']}")
        if hp["lower_lr"] is not None and not hp["lower_lr"] > 0:
            raise ValueError(f"bilevel lower_lr must be > 0 or None, got {hp['lower_lr']}")

    def build(self, ctx: MethodContext, hp) -> StepParts:
        cfg, k = ctx.cfg, ctx.num_domains
        tx_w, schedule = ctx.tx, ctx.schedule
        if hp["lower_lr"] is None:
            tx_u = tx_w
        else:
            tx_u, _ = state_lib.make_optimizer(
                dataclasses.replace(cfg.optim, lr=float(hp["lower_lr"])), ctx.schedule_steps)
        tx_p = optax.adam(float(hp["lr_p"]))
        view = OwnWeights(name=self.name)
        loss_fn = token_loss_fn(ctx)
        penalty = float(hp["penalty"])

        def init_fn(params):
            return penalty_state(params, jnp.zeros((k,), jnp.float32), k, cfg.train.seed,
                                 tx_w=tx_w, tx_u=tx_u, tx_p=tx_p)

        def step_fn(state, batch, frozen=None):
            del frozen
            ms = state.mix_state
            uwp = penalty_uwp(state)
            new, m = bilevel_update(loss_fn, uwp, batch, num_domains=k, tx_u=tx_u, tx_w=tx_w,
                                    tx_p=tx_p, penalty=penalty)
            bad = first_nonfinite(m["domain_loss"], m["domain_loss_u"], m["grad_p"])
            ok = bad < 0
            # Non-finite losses: keep the previous p (the host then raises, naming the domain).
            logits = jnp.where(ok, new["p"], ms["logits"])
            logits_opt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new["opt_p"],
                                      ms["logits_opt_state"])
            w_new = jax.nn.softmax(logits)
            mix_state = mixing.record_weights(ms, w_new, logits=logits,
                                              logits_opt_state=logits_opt, nonfinite_domain=bad)
            new_state = state.replace(params=new["w"], opt_state=new["opt_w"],
                                      mix_state=mix_state, step=state.step + 1,
                                      extra={"lower_params": new["u"],
                                             "lower_opt_state": new["opt_u"]})
            gap = m["L2_w"] - m["L2_u"]
            metrics = step_metrics(
                step=state.step, objective=m["val_loss"] + penalty * gap,
                domain_loss=m["domain_loss"], domain_count=m["domain_count"],  # w, token mean
                weights=w_new, sampling_weights=batch["sampling_weights"],
                grad_norm=m["grad_norm_w"], nonfinite_domain=bad, lr=schedule(state.step),
                extra={"val_loss": m["val_loss"], "L2_w": m["L2_w"], "L2_u": m["L2_u"],
                       "L2_gap": gap})
            return new_state, metrics

        return StepParts(step_fn=step_fn, init_fn=init_fn, weights=view, needs_target=True)
