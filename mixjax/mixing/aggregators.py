"""Gradient aggregators as mixers: PCGrad, MGDA, UPGrad and a target-preference UPGrad.

Multi-objective / multi-task methods that combine the K per-domain gradients
``g_d`` (rows of the Jacobian J) into one update ``J^T c = sum_d c_d g_d``. All
four compute the coefficients ``c`` from the K x K Gram matrix ``G = J J^T``
alone (plus ``b = J g_t`` for the preference variant), as torchjd's
``GramianWeightedAggregator`` does, so they run on the gradient engine's
``vmap`` and ``chunked`` strategies (``mixjax.mixing.grads``) without another
per-domain pass; the model gradient is the engine's ``combine(c)`` (one
weighted backward, the ``gradient_coeffs`` hook the train step already uses for
DoGE). ``grads.strategy = "jvp"`` gives no Gram matrix: asking it is a config
error before anything compiles (``grads.check_request``).

The mixer's ``weights`` (logged, averaged) are ``c / sum(c)``; the model
gradient uses ``c`` itself, whose scale is each method's (PCGrad's sums to about
K, as torchjd and the paper sum the projected gradients). Domains absent from
the batch (``count = 0``, only possible with ``grads.layout = "rows"``) get
c = 0 and are left out of the solve.

PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
arXiv 2001.06782, Alg. 1; torchjd ``src/torchjd/aggregation/_pcgrad.py``,
``_PCGradWeighting``): for each i, ``c^(i) = e_i``; for j in a random order
(j != i), ``s = G_j . c^(i)`` (= <g_j, g_i^PC>); if s < 0,
``c^(i)_j -= s / G_jj``. ``c = sum_i c^(i)``. The order is a fresh permutation
per i and per step, drawn from ``fold_in(PRNGKey(seed), step)`` (deterministic,
so a resumed run continues bit for bit).

MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018, Alg. 2 Frank-Wolfe; torchjd ``_mgda.py``, ``MGDAWeighting``):
``alpha = 1/K``; repeat up to ``max_iters``: ``t = argmin_t (G alpha)_t``,
``a = alpha^T G e_t``, ``b = alpha^T G alpha``, ``c = G_tt``;
``gamma = 1 if c <= a, 0 if b <= a, else (b - a)/(b + c - 2a)``;
``alpha <- (1 - gamma) alpha + gamma e_t``; stop when gamma < epsilon. c = alpha,
the min-norm point of the convex hull of the g_d.

UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
arXiv 2406.16232; torchjd ``_upgrad.py``, ``_utils/gramian.py``,
``_utils/dual_cone.py``): ``G <- G / tr(G)`` (0 if tr(G) < norm_eps),
``G <- G + reg_eps I``; for each i, ``v^(i) = argmin_v v^T G v  s.t.  v >= u_i e_i``
(the projection of u_i g_i onto the dual cone {x : <x, g_j> >= 0 for all j},
Prop. 1); ``c = sum_i v^(i)``, u = the preference (uniform 1/K). torchjd solves
the K box-constrained QPs with quadprog on the host in float64; here each is
solved inside the jitted step by a primal-dual active-set (semismooth Newton)
iteration (Hintermueller, Ito & Kunisch, SIAM J. Optim. 2002), which ends at
the exact KKT point once the active set repeats (at most ``qp_iters``
iterations, typically < K). tests/test_mixing_aggregators.py checks it against
a bounded least-squares solve (scipy) of the same QPs.

``upgrad_target`` (ParetoDA-style preference; Lv et al., "Pareto Domain
Adaptation", NeurIPS 2021, arXiv 2112.04137, steer the Pareto-descent direction
with the gradient of a held-out target): UPGrad whose preference is the
target alignment ``u = softmax(cos(g_d, g_t) / temperature)`` with
``cos = b_d / (||g_d|| ||g_t||)``. The projection keeps the step conflict-free
with every domain; the preference tilts it towards domains that help the
target. This Gram-form rule is mixjax's construction (ParetoDA's own solver,
over source/alignment/target losses, has no Gram-only statement); it needs the
target batch (``grads.target``) like DoGE's ``ood`` mode.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, init_state, record_weights, register

Array = jax.Array


# -- weightings: pure functions of the Gram matrix ------------------------------------------
def pcgrad_weights(gram: Array, orders: Array, present: Array | None = None) -> Array:
    """PCGrad coefficients; ``orders[i]`` is the visiting order of the j's for row i."""
    k = gram.shape[0]
    gram = jnp.asarray(gram, jnp.float32)
    present = jnp.ones((k,), bool) if present is None else present

    def one(i, order):
        def body(n, c):
            j = order[n]
            s = gram[j] @ c
            hit = (j != i) & present[j] & (s < 0.0) & (gram[j, j] > 0.0)
            return c.at[j].add(jnp.where(hit, -s / jnp.where(hit, gram[j, j], 1.0), 0.0))
        c0 = jax.nn.one_hot(i, k, dtype=jnp.float32)
        return jnp.where(present[i], jax.lax.fori_loop(0, k, body, c0), 0.0)

    return jnp.sum(jax.vmap(one)(jnp.arange(k), orders), axis=0)


def mgda_weights(gram: Array, epsilon: float = 1e-3, max_iters: int = 100,
                 present: Array | None = None) -> Array:
    """MGDA's Frank-Wolfe min-norm weights (torchjd ``MGDAWeighting``)."""
    k = gram.shape[0]
    gram = jnp.asarray(gram, jnp.float32)
    present = jnp.ones((k,), bool) if present is None else present
    alpha0 = present.astype(jnp.float32) / jnp.maximum(jnp.sum(present), 1)

    def cond(carry):
        it, _, gamma = carry
        return (it < max_iters) & (gamma >= epsilon)

    def body(carry):
        it, alpha, _ = carry
        ga = gram @ alpha
        t = jnp.argmin(jnp.where(present, ga, jnp.inf))
        a, b, c = ga[t], alpha @ ga, gram[t, t]
        gamma = jnp.where(c <= a, 1.0,
                          jnp.where(b <= a, 0.0, (b - a) / jnp.where(b + c - 2 * a != 0,
                                                                     b + c - 2 * a, 1.0)))
        alpha = (1.0 - gamma) * alpha + gamma * jax.nn.one_hot(t, k, dtype=jnp.float32)
        return it + 1, alpha, gamma

    _, alpha, _ = jax.lax.while_loop(cond, body, (0, alpha0, jnp.inf))
    return alpha


def normalize_regularize(gram: Array, norm_eps: float, reg_eps: float) -> Array:
    """torchjd's ``regularize(normalize(G, norm_eps), reg_eps)``."""
    tr = jnp.trace(gram)
    g = jnp.where(tr < norm_eps, 0.0, gram / jnp.where(tr < norm_eps, 1.0, tr))
    return g + reg_eps * jnp.eye(gram.shape[0], dtype=gram.dtype)


def box_qp(gram: Array, lower: Array, iters: int) -> Array:
    """argmin_v v^T G v s.t. v >= lower, G positive definite (primal-dual active set).

    KKT: G v = lam / 2, lam >= 0, v >= lower, lam_j (v_j - lower_j) = 0. Each
    iteration fixes v_j = lower_j on the active set A = {j : mu_j > v_j - lower_j}
    (mu = G v) and solves G_II v_I = -G_IA lower_A on the rest.
    """
    k = gram.shape[0]
    eye = jnp.eye(k, dtype=gram.dtype)

    def solve(active):
        m = jnp.where(active[:, None], eye, gram)
        return jnp.linalg.solve(m, jnp.where(active, lower, 0.0))

    def cond(carry):
        it, _, _, changed = carry
        return (it < iters) & changed

    def body(carry):
        it, active, _, _ = carry
        v = solve(active)
        mu = gram @ v
        new_active = mu - (v - lower) > 0.0
        return it + 1, new_active, v, jnp.any(new_active != active)

    active0 = jnp.ones((k,), bool)
    _, _, v, _ = jax.lax.while_loop(cond, body, (0, active0, lower, True))
    return jnp.maximum(v, lower)   # round-off only: the KKT point satisfies v >= lower


def upgrad_weights(gram: Array, pref: Array, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                   qp_iters: int | None = None, present: Array | None = None) -> Array:
    """UPGrad coefficients ``sum_i v^(i)`` (torchjd ``UPGradWeighting``)."""
    k = gram.shape[0]
    gram = jnp.asarray(gram, jnp.float32)
    present = jnp.ones((k,), bool) if present is None else present
    # Absent domains: decoupled identity rows (their zero gradient constrains nothing).
    pm = present[:, None] & present[None, :]
    g = normalize_regularize(jnp.where(pm, gram, 0.0), norm_eps, reg_eps)
    g = jnp.where(pm, g, jnp.eye(k, dtype=g.dtype))
    u = jnp.where(present, pref, 0.0)
    iters = qp_iters if qp_iters is not None else 2 * k + 10
    v = jax.vmap(lambda ui: box_qp(g, ui, iters))(jnp.diag(u))
    return jnp.where(present, jnp.sum(v, axis=0), 0.0)


# -- mixers ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class _GramAggregator(Mixer):
    """Common part: weights = c / sum(c), the model gradient = sum_d c_d g_d."""

    default_apply_to = "loss"   # the sampler keeps its weights; c acts on the gradient
    model_gradient = "coeffs"
    requires = frozenset({"gram", "count"})

    def init(self, num_domains: int):
        w = jnp.full((num_domains,), 1.0 / num_domains, jnp.float32)
        return init_state(w, count_initial=self.average_includes_initial,
                          coeffs=jnp.array(w))

    def coefficients(self, stats: Mapping[str, Array], step: Array) -> Array:
        raise NotImplementedError

    def update(self, state, stats, step):
        present = stats["count"] > 0
        c = jnp.where(present, self.coefficients(stats, step), 0.0)
        total = jnp.sum(c)
        w = jnp.where(total > 0, c / jnp.where(total > 0, total, 1.0),
                      present / jnp.maximum(jnp.sum(present), 1))
        return record_weights(state, w.astype(jnp.float32), coeffs=c.astype(jnp.float32))

    def gradient_coeffs(self, state, stats) -> Array:
        del stats
        return state["coeffs"]


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class PCGrad(_GramAggregator):
    name = "pcgrad"

    seed: int = 0

    def orders(self, k: int, step: Array) -> Array:
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(self.seed), step), k)
        return jax.vmap(lambda key: jax.random.permutation(key, k))(keys)

    def coefficients(self, stats, step):
        k = stats["gram"].shape[0]
        return pcgrad_weights(stats["gram"], self.orders(k, step), stats["count"] > 0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class MGDA(_GramAggregator):
    name = "mgda"

    epsilon: float = 1e-3
    max_iters: int = 100

    def __post_init__(self):
        super().__post_init__()
        if not self.epsilon > 0 or self.max_iters < 1:
            raise ValueError(f"mixer 'mgda': need epsilon > 0 and max_iters >= 1; "
                             f"got {self.epsilon}, {self.max_iters}")

    def coefficients(self, stats, step):
        del step
        return mgda_weights(stats["gram"], self.epsilon, self.max_iters, stats["count"] > 0)


def check_upgrad_eps(name: str, norm_eps: float, reg_eps: float) -> None:
    """UPGrad's regularisers (over domains here, over sequences in ``mixing.iwrm``)."""
    if not reg_eps > 0 or norm_eps < 0:
        raise ValueError(f"mixer {name!r}: need reg_eps > 0 (a positive definite "
                         f"Gram matrix) and norm_eps >= 0; got {reg_eps}, {norm_eps}")


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UPGrad(_GramAggregator):
    name = "upgrad"

    norm_eps: float = 1e-4
    reg_eps: float = 1e-4
    qp_iters: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_upgrad_eps(self.name, self.norm_eps, self.reg_eps)

    def preference(self, stats) -> Array:
        k = stats["gram"].shape[0]
        return jnp.full((k,), 1.0 / k, jnp.float32)

    def coefficients(self, stats, step):
        del step
        return upgrad_weights(stats["gram"], self.preference(stats), self.norm_eps,
                              self.reg_eps, self.qp_iters, stats["count"] > 0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UPGradTarget(UPGrad):
    name = "upgrad_target"
    requires = frozenset({"gram", "grad_dot", "target_grad_norm", "count"})

    temperature: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"mixer 'upgrad_target': temperature must be > 0, "
                             f"got {self.temperature}")

    def preference(self, stats) -> Array:
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(stats["gram"]), 0.0))
        denom = norms * stats["target_grad_norm"]
        cos = jnp.where(denom > 0, stats["grad_dot"] / jnp.where(denom > 0, denom, 1.0), 0.0)
        present = stats["count"] > 0
        return jax.nn.softmax(jnp.where(present, cos / self.temperature, -jnp.inf))
