"""DIDS: domain impact-aware data sampling (the sampling-ratio half).

Shi et al., "DIDS: Domain Impact-aware Data Sampling for Large Language Model Training",
EMNLP 2025, arXiv 2504.13227. Reference code ``shiweijiezero/DIDS`` (commit bccc432;
``mixture_DIDS.py`` is the shipped script): ``compute_fisher_matrix_diagonal`` (lines
1091-1219), ``compute_DIDS_FIM`` (1222-), ``calculate_potential_factor`` (835-877),
``DIDS_mixture_multi_task`` (880-1088) and the round loop of ``main`` (1427-1512: 25
rounds, ``beta=0.2``). ``utils.py:464-733`` holds an older variant of the combination
(``contribution = sim (1 + 0.5 pot) change``); we follow the shipped script.

Every round (``update_every`` training steps here; a round of SFT there), with training
domains i = 1..K and downstream targets j = 1..T (``grads.target``):

1. **Domain impact** (FIM-guided). The reference approximates the KL divergence between
   the model updated by domain i's gradient and by target j's gradient with a diagonal
   empirical Fisher ``F`` (mean squared batch gradient over the last 10% of the parameter
   tensors, plus 1e-10)::

       KL_ij = 1/2 sum_p F_p (g_tj,p - g_i,p)^2
       impact_ij = (max_i KL_ij - KL_ij) / sum_i (max_i KL_ij - KL_ij)     (0 if the sum is 0)

2. **Potential** from the target's loss trajectory ``h_j`` (one value per round): the
   last round's improvement ``h_j[-2] - h_j[-1]`` plus the predicted future improvement
   ``h_j[-1] - L_j(n + horizon)`` of the fit ``L_j(x) = a exp(-b x) + c`` over
   x = 0..n-1 (``1.0`` while fewer than ``min_fit_rounds`` rounds exist, as the
   reference returns; 0 if the fit fails).

3. **Utility with diminishing returns**: dividing by the current sampling probability
   makes a domain's marginal utility fall as it is sampled more::

       u_i = mean_j impact_ij * (improvement_j + future_j) / alpha_i    (negative -> 1e-7)
       u_i = sum_j impact_ij          while fewer than 2 rounds of history exist
       w   = u^(1/temperature) / sum u^(1/temperature)    (uniform if the sum is 0)
       alpha <- beta * alpha + (1 - beta) * w
       alpha <- (1 - eps) * alpha + eps / K

   ``temperature = 1`` and ``eps = 0`` are the reference's plain normalisation.

Our choices, where mixjax's online setting differs:

* **Fisher: isotropic.** The gradient engine gives inner products, not coordinates, so the
  diagonal Fisher enters only through its mean diagonal entry ``f = tr(F) / P`` (the
  scalar approximation ``F ~ f I``). Then ``KL_ij = f/2 ||g_tj - g_i||^2 = f/2 (||g_i||^2
  - 2 <g_i, g_tj> + ||g_tj||^2)`` from ``grad_norm``, ``grad_dot``, ``target_grad_norm``,
  and ``f`` (common to all domains for a target) cancels in the impact normalisation: the
  impact is that of the Euclidean gradient distance. A per-coordinate Fisher would need
  a new engine statistic (``sum_p F_p (g_t,p - g_i,p)^2``); not done. The reference's
  "last 10% of tensors" is ``grads.param_filter`` (a regex on the parameter path).
* **Gradients per round**: the reference averages 100 samples' gradients per domain once
  a round; here every step's batch gives ``g_i`` and ``g_tj``, and the round's distance is
  the mean over its steps of the per-step squared distance (steps where domain i is absent
  are skipped; a domain absent all round keeps its last distance, or the round's mean
  over the observed domains if it was never observed). Per-batch gradient noise adds to
  each squared distance.
* **Loss trajectory**: the target's loss history holds one value per round, the mean of
  the target batches' losses over the round's steps (``target_loss``, the value whose
  gradient is ``g_tj``; the reference evaluates 200 fixed samples per task after each
  round and starts the history with the initial model's loss). The last ``history``
  rounds are kept and fitted.
* **The fit** runs inside the compiled step: for each ``b`` on a geometric grid
  (``B_GRID``: 256 values in [1e-3, 10]) ``a`` and ``c`` are the closed-form least-squares
  solution, and the ``b`` with the smallest squared error wins (the same model and
  loss; the reference calls ``scipy.optimize.curve_fit`` from ``b = 0.1``, unbounded,
  which cannot run in a jitted step). Rising losses give ``a < 0`` and a negative future.
* Round r's weights are computed inside step ``r R`` (R = ``update_every``) from the
  statistics of steps ``(r-1) R .. r R - 1`` (step ``r R``'s own open the next round) and
  reach the sampler for the following batches. Between rounds the weights stay fixed.
* Round 1 (one history value) uses the impact alone, as the reference's round 0 does (its
  history then holds only the initial model's loss).

Cost: the gradient engine every step (``grad_norm`` needs ``grads.strategy`` ``vmap`` or
``chunked``; ``jvp`` cannot supply it) plus the target batch's gradient. The model gradient
is the engine's own: the plain token-mean loss is ``sum_d (n_d / N) L_d`` (``n_d`` loss
tokens of domain d, N in all), so its gradient is ``combine(c)`` with ``c_d = n_d / N``
(``model_gradient = "coeffs"``) and the step runs no second forward and backward.

The **regrouping half** of DIDS (gradient clustering of the training data with a proxy
model, TRAK-style projection) is not reimplemented: run ``mixjax data regroup`` (k-means
over TF-IDF [+SVD] embeddings, :mod:`mixjax.data.regroup`) first and train DIDS on its
clusters (``data.spec = <out>/spec.json``); the reference also offers embedding k-means.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register

# b values of the exponential fit L(x) = a exp(-b x) + c (closed form in a, c for each b).
B_GRID = np.geomspace(1e-3, 10.0, 256).astype(np.float32)
NEGATIVE_UTILITY = 1e-7      # the reference's weight for a domain whose utility is < 0


def squared_distance(grad_norm, grad_dot, target_grad_norm):
    """``||g_tj - g_i||^2`` f32[K, T] (clipped at 0 against rounding)."""
    dot = grad_dot.reshape(grad_dot.shape[0], -1)
    tn = jnp.reshape(target_grad_norm, (-1,))
    d = grad_norm[:, None] ** 2 - 2.0 * dot + tn[None, :] ** 2
    return jnp.maximum(d, 0.0)


def impact(dist):
    """``(max_i D_ij - D_ij) / sum_i (max_i D_ij - D_ij)`` per target j (0 if that sum is 0)."""
    diff = jnp.max(dist, axis=0, keepdims=True) - dist
    tot = jnp.sum(diff, axis=0, keepdims=True)
    return jnp.where(tot > 0, diff / jnp.where(tot > 0, tot, 1.0), 0.0)


def exp_forecast(hist, n, horizon):
    """Fit ``a exp(-b x) + c`` to the last ``n`` rows of ``hist`` f32[H, T] (x = 0..n-1)
    and predict at ``x = n + horizon``: f32[T]."""
    h = hist.shape[0]
    x = jnp.arange(h, dtype=jnp.float32) - (h - n)            # the valid rows are x = 0..n-1
    m = (x >= 0).astype(jnp.float32)[:, None]                 # [H, 1]
    nm = jnp.maximum(jnp.sum(m), 1.0)
    b = jnp.asarray(B_GRID)[:, None, None]                    # [G, 1, 1]
    phi = jnp.exp(-b * jnp.maximum(x, 0.0)[None, :, None])    # [G, H, 1]
    y = hist[None]                                            # [1, H, T]
    phi_bar = jnp.sum(m * phi, axis=1, keepdims=True) / nm
    y_bar = jnp.sum(m * y, axis=1, keepdims=True) / nm
    sxx = jnp.sum(m * (phi - phi_bar) ** 2, axis=1, keepdims=True)
    sxy = jnp.sum(m * (phi - phi_bar) * (y - y_bar), axis=1, keepdims=True)
    ok = sxx > 1e-12
    a = jnp.where(ok, sxy / jnp.where(ok, sxx, 1.0), 0.0)     # [G, 1, T]
    c = y_bar - a * phi_bar
    sse = jnp.sum(m * (y - a * phi - c) ** 2, axis=1)         # [G, T]
    sse = jnp.where(ok[:, 0], sse, jnp.inf)
    best = jnp.argmin(sse, axis=0)                            # [T]
    cols = jnp.arange(hist.shape[1])
    a_b, c_b = a[best, 0, cols], c[best, 0, cols]
    return a_b * jnp.exp(-jnp.asarray(B_GRID)[best] * (n + horizon)) + c_b


def weights_rule(alpha, dist, hist, n_hist, *, beta, temperature, eps, horizon,
                 min_fit_rounds, short_history_potential):
    """One DIDS update (module docstring): ``(new alpha f32[K], impact f32[K,T],
    effective improvement f32[T])`` from the round's distances ``dist`` f32[K, T] and the
    target loss history ``hist`` f32[H, T] (the last ``n_hist`` rows valid)."""
    k = alpha.shape[0]
    sim = impact(dist)
    last, prev = hist[-1], hist[-2]
    fitted = hist[-1] - exp_forecast(hist, n_hist, horizon)
    fitted = jnp.where(jnp.isfinite(fitted), fitted, 0.0)   # a failed fit: no future gain
    future = jnp.where(n_hist >= min_fit_rounds, fitted, short_history_potential)
    effective = (prev - last) + future
    util = jnp.where(alpha[:, None] > 0, sim * effective[None, :]
                     / jnp.where(alpha > 0, alpha, 1.0)[:, None], 0.0)
    u = jnp.mean(util, axis=1)
    u = jnp.where(u < 0, NEGATIVE_UTILITY, u)
    u = jnp.where(n_hist >= 2, u, jnp.sum(sim, axis=1))
    powered = u ** (1.0 / temperature)
    tot = jnp.sum(powered)
    w = jnp.where(tot > 0, powered / jnp.where(tot > 0, tot, 1.0), 1.0 / k)
    new = beta * alpha + (1.0 - beta) * w
    new = (1.0 - eps) * new + eps / k
    return new, sim, jnp.where(n_hist >= 2, effective, 0.0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class DIDS(Mixer):
    name = "dids"
    requires = frozenset({"grad_norm", "grad_dot", "target_grad_norm", "target_loss", "count"})
    default_apply_to = "sampling"
    multi_target = True      # grads.target may list several downstream targets
    model_gradient = "coeffs"  # the token-mean gradient from the engine (see Cost above)

    update_every: int = 100
    beta: float = 0.2
    temperature: float = 1.0
    eps: float = 0.0
    horizon: int = 5
    min_fit_rounds: int = 5
    short_history_potential: float = 1.0
    history: int = 32
    num_targets: int = 1     # filled from grads.target by the trainer (mixing.build)

    def __post_init__(self):
        super().__post_init__()
        for key in ("update_every", "num_targets"):
            if getattr(self, key) < 1:
                raise ValueError(f"mixer 'dids': {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"mixer 'dids': beta must be in [0, 1), got {self.beta}")
        if not self.temperature > 0:
            raise ValueError(f"mixer 'dids': temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"mixer 'dids': eps must be in [0, 1], got {self.eps}")
        if self.min_fit_rounds < 3:
            raise ValueError(f"mixer 'dids': min_fit_rounds must be >= 3 (a 3-parameter fit), "
                             f"got {self.min_fit_rounds}")
        if self.horizon < 0:
            raise ValueError(f"mixer 'dids': horizon must be >= 0, got {self.horizon}")
        if self.history < self.min_fit_rounds:
            raise ValueError(f"mixer 'dids': history must be >= min_fit_rounds "
                             f"({self.min_fit_rounds}), got {self.history}")

    def init(self, num_domains):
        k, t = num_domains, self.num_targets
        z = jnp.zeros
        return init_state(jnp.full((k,), 1.0 / k, jnp.float32),
                          dist_sum=z((k, t), jnp.float32), dist_n=z((k,), jnp.float32),
                          dist=z((k, t), jnp.float32), seen=z((k,), jnp.float32),
                          tloss_sum=z((t,), jnp.float32), tloss_n=z((), jnp.float32),
                          hist=z((self.history, t), jnp.float32), n_hist=z((), jnp.float32),
                          impact=z((k, t), jnp.float32), improvement=z((t,), jnp.float32))

    def gradient_coeffs(self, state, stats):
        """``c_d = n_d / N``: ``sum_d c_d g_d`` is the gradient of the plain token-mean loss."""
        count = stats["count"]
        return count / jnp.maximum(jnp.sum(count), 1.0)

    def _step_values(self, stats, k):
        dot = stats["grad_dot"]
        cols = 1 if dot.ndim == 1 else dot.shape[1]
        if cols != self.num_targets:
            raise ValueError(f"mixer 'dids': num_targets={self.num_targets}, but the gradient "
                             f"engine gives {cols} target gradient(s); set "
                             "mixing.hparams.num_targets to the number of grads.target domains "
                             "(the trainer does so when it is not given)")
        dist = squared_distance(stats["grad_norm"], dot, stats["target_grad_norm"])
        return dist, stats["count"] > 0, jnp.reshape(stats["target_loss"], (-1,))

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        dist_now, present, tloss = self._step_values(stats, k)
        due = (step % self.update_every == 0) & (step > 0)
        # Close the round: the mean distance of each domain over the steps it was present.
        obs = state["dist_n"] > 0
        mean = state["dist_sum"] / jnp.maximum(state["dist_n"], 1.0)[:, None]
        observed_mean = (jnp.sum(jnp.where(obs[:, None], mean, 0.0), axis=0)
                         / jnp.maximum(jnp.sum(obs), 1))
        fallback = jnp.where(state["seen"][:, None] > 0, state["dist"], observed_mean[None, :])
        dist = jnp.where(obs[:, None], mean, fallback)
        round_loss = state["tloss_sum"] / jnp.maximum(state["tloss_n"], 1.0)
        hist = jnp.concatenate([state["hist"][1:], round_loss[None]], axis=0)
        n_hist = jnp.minimum(state["n_hist"] + 1.0, float(self.history))
        alpha, sim, eff = weights_rule(
            state["weights"], dist, hist, n_hist, beta=self.beta, temperature=self.temperature,
            eps=self.eps, horizon=self.horizon, min_fit_rounds=self.min_fit_rounds,
            short_history_potential=self.short_history_potential)

        def pick(new, old):
            return jnp.where(due, new, old)

        keep = 1.0 - due.astype(jnp.float32)      # the window restarts after a due step
        pres = present.astype(jnp.float32)
        return record_weights(
            state, pick(alpha, state["weights"]),
            dist_sum=state["dist_sum"] * keep + pres[:, None] * dist_now,
            dist_n=state["dist_n"] * keep + pres,
            dist=pick(dist, state["dist"]),
            seen=pick(jnp.maximum(state["seen"], obs.astype(jnp.float32)), state["seen"]),
            tloss_sum=state["tloss_sum"] * keep + tloss, tloss_n=state["tloss_n"] * keep + 1.0,
            hist=pick(hist, state["hist"]), n_hist=pick(n_hist, state["n_hist"]),
            impact=pick(sim, state["impact"]), improvement=pick(eff, state["improvement"]))
