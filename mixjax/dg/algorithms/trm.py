"""TRM, transfer risk minimisation (Xu & Jaakkola, "Learning representations that support
robust transfer of predictors", arXiv 2110.09940), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``TRM.update`` and ``TRM.neum``, commit b93c22a).

State: the network (featuriser phi, linear classifier w; DomainBed's ``optimizer_f`` and
``optimizer_c`` are two Adams with equal settings stepped together, i.e. one Adam), K per-env
linear heads h_Q = (W_Q, b_Q) and alpha f32[K, K] (initially 1 - I).

Steps t < ``iters``: ERM, L = CE(w(phi(x)), y).
Steps t >= ``iters``, with z_e = phi(x_e) and l_P(h) = CE(h(z_P), y_P):

1. alpha <- alpha / rowsum(alpha);
2. every head takes 30 plain SGD steps (lr 0.1, weight and bias) on l_Q(h_Q) with z detached;
3. for every env Q (P ranges over the other envs):

       L_P^Q = sum_P alpha_QP l_P(h_Q),   g_Q = d l_Q(h_Q) / d W_Q   (kept in the graph),
       v = stopgrad(d L_P^Q / d W_Q),     u = Neumann(v) ~ H_Q^-1 v   (H_Q: Hessian of l_Q in W_Q,
                                                                      z_Q detached),
       swap_Q = L_P^Q - cos_lambda * <u, g_Q>,
       alpha_QP <- alpha_QP * exp(groupdro_eta * alpha_QP * l_P(h_Q))   (the weighted loss,
                                                                       ``loss_P[i].data``);

4. L = CE(w(phi(x)), y) + (1/K) sum_Q swap_Q; one Adam step on (phi, w). The heads only move
   in step 2.

Two details follow the reference code as it runs (torch semantics), not the paper:

* ``neum``'s first iterate aliases: ``h_estimate = v`` binds the same tensor that ``v -= hv``
  then changes in place, so with v_k = (I - H)^k v the estimate is
  u = 2 v_1 + v_2 + ... + v_n (not v_0 + v_1 + ... + v_n), n <= 10, stopping after the first
  iterate with max|u| > 10 (that iterate included).
* L_P^Q multiplies by ``alpha[Q, i].data.detach()``, a tensor sharing storage with alpha but
  not its version counter; the in-place alpha update that follows is therefore seen by the
  backward pass: the value of swap_Q uses the old alpha_QP, its gradient the updated one.

Reported: ``nll`` (the CE) and ``trm_loss`` ((1/K) sum_Q swap_Q; 0 before ``iters``).
Hyperparameters (``hparams_registry.py``): cos_lambda 1e-4 (10^U(-5,0)), iters 200
(int 10^U(0,4)), groupdro_eta 1e-2 (10^U(-3,-1)). DomainBed's ``class_balanced`` branch
(default False) is not implemented; its unused (K+1)-th head is not created.
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy

HEAD_STEPS, HEAD_LR = 30, 0.1
NEUMANN_ITERS, NEUMANN_BOUND = 10, 10.0

sg = jax.lax.stop_gradient


def head_ce(w, b, z, y):
    """Mean CE of the linear head ``z @ w + b``; w f32[D, C], b f32[C], z f32[n, D]."""
    return cross_entropy(z @ w + b, y)


def fit_heads(heads, z, ys, steps: int = HEAD_STEPS, lr: float = HEAD_LR):
    """``steps`` plain SGD steps of every head on its own env: heads {"w": [K, D, C], "b": [K, C]},
    z f32[K, b, D] (detached), ys int32[K, b]."""
    grad = jax.vmap(jax.grad(head_ce, argnums=(0, 1)))

    def body(_, h):
        gw, gb = grad(h["w"], h["b"], z, ys)
        return {"w": h["w"] - lr * gw, "b": h["b"] - lr * gb}

    return jax.lax.fori_loop(0, steps, body, heads)


def neumann(v, hvp, iters: int = NEUMANN_ITERS, bound: float = NEUMANN_BOUND):
    """DomainBed ``TRM.neum`` as it runs: u = 2 v_1 + v_2 + ... + v_n with v_k = v_{k-1} - H v_{k-1},
    stopping after the first iterate whose max |u| exceeds ``bound``."""

    def body(k, carry):
        v, u, done = carry
        v_new = v - hvp(v)
        u_new = jnp.where(k == 0, 2.0 * v_new, u + v_new)
        keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731
        return keep(v_new, v), keep(u_new, u), done | (jnp.abs(u_new).max() > bound)

    _, u, _ = jax.lax.fori_loop(0, iters, body, (v, v, jnp.zeros((), bool)))
    return u


def transfer_risk(heads, z, ys, alpha, cos_lambda, eta):
    """(sum_Q swap_Q / K as a differentiable function of z, updated alpha); ``alpha`` already
    row-normalised, ``heads`` already fitted. The value uses the old alpha, the gradient the new
    one (see the module docstring)."""
    k = z.shape[0]
    total = jnp.zeros(())
    new_alpha = alpha
    for q in range(k):  # K is static and small
        w, b = heads["w"][q], heads["b"][q]
        g_q = jax.grad(head_ce)(w, b, z[q], ys[q])
        ce_p = jax.vmap(head_ce, in_axes=(None, None, 0, 0))(w, b, z, ys)
        others = jnp.arange(k) != q
        a_old = jnp.where(others, alpha[q], 0.0)
        v = sg(jax.grad(lambda ww: jnp.dot(a_old, jax.vmap(head_ce, in_axes=(None, None, 0, 0))(ww, b, z, ys)))(w))
        hvp = lambda vec: jax.jvp(jax.grad(lambda ww: head_ce(ww, b, sg(z[q]), ys[q])), (w,), (vec,))[1]  # noqa: E731,B023
        u = sg(neumann(v, hvp))
        a_new = jnp.where(others, a_old * jnp.exp(eta * a_old * sg(ce_p)), alpha[q])
        loss_p_val, loss_p_grad = jnp.dot(a_old, ce_p), jnp.dot(jnp.where(others, a_new, 0.0), ce_p)
        total = total + loss_p_grad + sg(loss_p_val - loss_p_grad) - cos_lambda * jnp.vdot(u, g_q)
        new_alpha = new_alpha.at[q].set(a_new)
    return total / k, new_alpha


@register
class TRM(Algorithm):
    name = "trm"

    @classmethod
    def own_hparams(cls, small):
        return {
            "cos_lambda": H.HParam(1e-4, lambda r: 10 ** r.uniform(-5, 0)),
            "iters": H.HParam(200, lambda r: int(10 ** r.uniform(0, 4))),
            "groupdro_eta": H.HParam(1e-2, lambda r: 10 ** r.uniform(-3, -1)),
        }

    def init(self, key, hp):
        k_net, k_heads = jax.random.split(key)
        state = super().init(k_net, hp)
        d = self.model.abstract.featurizer.n_outputs
        c, k = self.net.num_classes, self.num_envs
        init = jax.nn.initializers.lecun_normal()  # flax's Linear default (as the network's heads)
        w = jax.vmap(lambda kk: init(kk, (d, c), jnp.float32))(jax.random.split(k_heads, k))
        heads = {"w": w, "b": jnp.zeros((k, c), jnp.float32)}
        alpha = jnp.ones((k, k), jnp.float32) - jnp.eye(k, dtype=jnp.float32)
        return {**state, "heads": heads, "alpha": alpha}

    def _forward(self, params, xs):
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        return z, z.reshape(k, b, -1)

    def update(self, hp, state, xs, ys, key):
        params, y = state["params"], ys.reshape(-1)

        def erm(_):
            def loss_fn(p):
                z, _ = self._forward(p, xs)
                return cross_entropy(self.classify(p, z), y)

            nll, g = jax.value_and_grad(loss_fn)(params)
            return g, state["heads"], state["alpha"], nll, jnp.zeros(())

        def trm(_):
            alpha = state["alpha"] / state["alpha"].sum(1, keepdims=True)
            heads = fit_heads(state["heads"], sg(self._forward(params, xs)[1]), ys)

            def loss_fn(p):
                z, zs = self._forward(p, xs)
                nll = cross_entropy(self.classify(p, z), y)
                swap, new_alpha = transfer_risk(heads, zs, ys, alpha, hp["cos_lambda"], hp["groupdro_eta"])
                return nll + swap, (nll, swap, new_alpha)

            g, (nll, swap, new_alpha) = jax.grad(loss_fn, has_aux=True)(params)
            return g, heads, new_alpha, nll, swap

        grads, heads, alpha, nll, swap = jax.lax.cond(state["step"] >= hp["iters"], trm, erm, None)
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], params)
        new = {**state, "params": params, "opt": opt, "heads": heads, "alpha": alpha, "step": state["step"] + 1}
        return new, {"loss": nll + swap, "nll": nll, "trm_loss": swap}
