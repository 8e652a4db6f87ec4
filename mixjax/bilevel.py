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

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import grads as G

PyTree = Any


def init_bilevel_state(params: PyTree, *, num_domains: int, tx_u: optax.GradientTransformation,
                       tx_w: optax.GradientTransformation, tx_p: optax.GradientTransformation,
                       init_logits: jax.Array | None = None) -> dict[str, Any]:
    """u and w both start from ``params``; p from ``init_logits`` (uniform by default)."""
    p = (jnp.zeros((num_domains,), jnp.float32) if init_logits is None
         else jnp.asarray(init_logits, jnp.float32))
    w = jax.tree.map(jnp.array, params)   # a distinct copy (donation-safe)
    return {"u": params, "w": w, "p": p, "opt_u": tx_u.init(params), "opt_w": tx_w.init(w),
            "opt_p": tx_p.init(p), "weight_sum": jax.nn.softmax(p),
            "num_weights": jnp.ones((), jnp.float32), "step": jnp.zeros((), jnp.int32)}


UWP_KEYS = ("u", "w", "p", "opt_u", "opt_w", "opt_p")


def bilevel_update(token_loss_fn: G.TokenLossFn, uwp: Mapping[str, Any],
                   batch: Mapping[str, jax.Array], *, num_domains: int,
                   tx_u: optax.GradientTransformation, tx_w: optax.GradientTransformation,
                   tx_p: optax.GradientTransformation, penalty: float):
    """One ScaleBiO step on ``uwp = {u, w, p, opt_u, opt_w, opt_p}`` (pure; see the module
    docstring). Returns ``(new uwp, metrics)``; ``metrics["weights"]`` = softmax(new p).

    Used by :func:`make_bilevel_step` and by the run loop's ``bilevel`` objective
    (``mixjax.train.objectives``), which keeps u, w and p in its own state layout.
    """
    k = num_domains
    lam = jax.nn.softmax(uwp["p"])
    val = G.target_batch(batch)

    def loss_vec(params):
        return G.domain_loss_vector(token_loss_fn, params, batch, k)

    lu, pull_u, count = jax.vjp(loss_vec, uwp["u"], has_aux=True)
    lw, pull_w, _ = jax.vjp(loss_vec, uwp["w"], has_aux=True)
    l1, g1 = jax.value_and_grad(lambda w: G.mean_loss(token_loss_fn, w, val))(uwp["w"])
    gu = pull_u(penalty * lam)[0]
    gw = jax.tree.map(jnp.add, pull_w(penalty * lam)[0], g1)
    gap = jax.lax.stop_gradient(lw - lu)
    gp = jax.grad(lambda p: penalty * jnp.dot(jax.nn.softmax(p), gap))(uwp["p"])

    upd_u, opt_u = tx_u.update(gu, uwp["opt_u"], uwp["u"])
    upd_w, opt_w = tx_w.update(gw, uwp["opt_w"], uwp["w"])
    upd_p, opt_p = tx_p.update(gp, uwp["opt_p"], uwp["p"])
    p = optax.apply_updates(uwp["p"], upd_p)
    new = {"u": optax.apply_updates(uwp["u"], upd_u), "w": optax.apply_updates(uwp["w"], upd_w),
           "p": p, "opt_u": opt_u, "opt_w": opt_w, "opt_p": opt_p}
    metrics = {"val_loss": l1, "L2_w": jnp.dot(lam, lw), "L2_u": jnp.dot(lam, lu),
               "domain_loss": lw, "domain_loss_u": lu, "domain_count": count,
               "weights": jax.nn.softmax(p), "grad_p": gp, "grad_norm_w": optax.tree.norm(gw)}
    return new, metrics


def make_bilevel_step(token_loss_fn: G.TokenLossFn, *, num_domains: int,
                      tx_u: optax.GradientTransformation, tx_w: optax.GradientTransformation,
                      tx_p: optax.GradientTransformation, penalty: float = 10.0, jit: bool = True):
    """``step(state, batch) -> (state, metrics)``; ``batch`` holds ``tokens``, ``domain_id``
    and the validation batch as ``target_tokens``."""
    k = num_domains
    if not penalty > 0:
        raise ValueError(f"bilevel penalty a must be > 0, got {penalty}")

    def step(state, batch):
        new_uwp, metrics = bilevel_update(
            token_loss_fn, {key: state[key] for key in UWP_KEYS}, batch, num_domains=k,
            tx_u=tx_u, tx_w=tx_w, tx_p=tx_p, penalty=penalty)
        new_lam = metrics["weights"]
        new = {**state, **new_uwp, "weight_sum": state["weight_sum"] + new_lam,
               "num_weights": state["num_weights"] + 1.0, "step": state["step"] + 1}
        return new, {"step": state["step"], **metrics}

    return jax.jit(step, donate_argnums=(0,)) if jit else step


def bilevel_weights(state: Mapping[str, Any]) -> jax.Array:
    """Current domain weights softmax(p)."""
    return jax.nn.softmax(state["p"])


def bilevel_average(state: Mapping[str, Any]) -> jax.Array:
    """Time-averaged domain weights (counting the initial weights once)."""
    return state["weight_sum"] / state["num_weights"]
