"""ADO: adaptive data optimisation from per-domain power-law fits of the loss.

Jiang, Zhou, Pham, Kolter, Liang (ICLR 2025, arXiv 2410.11820), "Adaptive Data
Optimization: Dynamic Sample Selection with Scaling Laws"; reference code
``yidingjiang/ado: src/data_selectors/ado.py`` (``AdoSelector``, commit
bc3d8d0). Acts on sampling.

Law per domain k, with n the shared cumulative number of training sequences::

    L_k(n) = exp(E_k) + exp(A_k) * n^(-alpha_k)

fitted on the training loss in log space with a Huber loss (delta 1e-3)
subject to alpha in [0, 0.8], A <= 6.5, E >= 0.5. Every step after
``start_step`` (once a fit exists), with mu the token prior and h an EMA
(0.9) of the realised batch composition::

    slope_k = max(alpha_k, 0.05) * exp(A_k) * n^(-alpha_k) / n      (= -dL_k/dn)
    rho_k   ∝ slope_k * mu_k * h_k^(1/2)
    rho     = floor(rho, 0.01), renormalised      (reference ``clip_min_probability``)
    pi_t    = 0.9 * pbar_{t-1} + 0.1 * rho_t      (the sampling weights)
    pbar_t  = (1 - 1/(t+1)) * pbar_{t-1} + rho_t / (t+1)

Before the first fit pi = mu. The law is refitted every ``refit_every``
steps. A domain absent from a batch has its previous loss imputed (the batch's
mean loss before any history), as in the reference.

How the fit runs inside the compiled step (the reference fits on the host
with jaxopt LBFGS, 200 iterations from an 8x8x8 initial grid, on the whole
Savitzky-Golay-smoothed history subsampled every 10th step):

* history: a fixed-size ring buffer of ``history`` points; each point is the
  mean over ``record_every`` (10) consecutive steps of the per-domain loss and
  of n (a boxcar filter instead of Savitzky-Golay, which needs a centred
  window); steps before ``ignore_steps`` are not recorded. Only the last
  ``history`` points are fitted (the reference fits all of them).
* solver: ``fit_iterations`` projected Levenberg-Marquardt steps on the
  iteratively reweighted (Huber) least-squares problem, vmapped over a
  ``grid_points``^3 grid of initial values spanning the reference's grid
  ranges and over domains; the box constraints are enforced by projection
  instead of the reference's linear penalties. The best start (lowest Huber
  objective) wins; a non-finite fit keeps the previous parameters (the
  reference's ``check_valid``).

Defaults: reference values for the law, bounds, Huber delta, EMA 0.9, blend
0.1, floor 0.01, ``refit_every`` 1000, ``ignore_steps`` = ``start_step`` =
1000. The h^(1/2) factor follows bc3d8d0; older commits used
(h (1 - h))^(1/2).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register
from mixjax.mixing.domain_stats import sequence_counts


def _huber(r, delta):
    a = jnp.abs(r)
    return jnp.where(a > delta, delta * (a - 0.5 * delta), 0.5 * r * r)


def _predict(theta, log_n):
    """log L(n) = logsumexp(A - alpha log n, E)."""
    a, e, alpha = theta[0], theta[1], theta[2]
    return jnp.logaddexp(a - alpha * log_n, e)


def _project(theta, bounds):
    max_a, min_e, max_alpha = bounds
    return jnp.stack([jnp.minimum(theta[0], max_a), jnp.maximum(theta[1], min_e),
                      jnp.clip(theta[2], 0.0, max_alpha)])


def _objective(theta, log_n, y, m, delta):
    return jnp.sum(m * _huber(_predict(theta, log_n) - y, delta))


def _fit_from(theta0, log_n, y, m, delta, bounds, iterations):
    """Projected Levenberg-Marquardt / IRLS from one start; returns (theta, objective)."""
    theta0 = _project(theta0, bounds)

    def body(_, carry):
        theta, lam, obj = carry
        a, e, alpha = theta[0], theta[1], theta[2]
        z = a - alpha * log_n
        s = jax.nn.sigmoid(z - e)                      # share of the reducible term
        r = jnp.logaddexp(z, e) - y
        jac = jnp.stack([s, 1.0 - s, -log_n * s], axis=1)          # [H, 3]
        w = m * jnp.where(jnp.abs(r) > delta, delta / jnp.maximum(jnp.abs(r), delta), 1.0)
        hess = jac.T @ (w[:, None] * jac)
        grad = jac.T @ (w * r)
        damp = lam * jnp.diag(jnp.diag(hess)) + (1e-12 + 1e-9 * jnp.trace(hess)) * jnp.eye(3)
        cand = _project(theta - jnp.linalg.solve(hess + damp, grad), bounds)
        cand_obj = _objective(cand, log_n, y, m, delta)
        better = jnp.isfinite(cand_obj) & (cand_obj < obj)
        return (jnp.where(better, cand, theta),
                jnp.clip(jnp.where(better, lam * 0.3, lam * 4.0), 1e-9, 1e9),
                jnp.where(better, cand_obj, obj))

    init = (theta0, jnp.float32(1e-3), _objective(theta0, log_n, y, m, delta))
    theta, _, obj = jax.lax.fori_loop(0, iterations, body, init)
    return theta, obj


def initial_grid(points: int) -> jax.Array:
    """f32[points^3, 3] starts over the reference's grid ranges (A, E, alpha)."""
    a = np.linspace(-2.0, 5.0, points)
    e = np.linspace(-2.0, 1.5, points)
    al = np.linspace(0.0, 0.7, points)
    grid = np.stack(np.meshgrid(a, e, al, indexing="ij"), -1).reshape(-1, 3)
    return jnp.asarray(grid, jnp.float32)


@functools.partial(jax.jit, static_argnames=("grid_points", "iterations"))
def fit_power_law(n, loss, mask, *, grid_points: int = 4, iterations: int = 30,
                  huber_delta: float = 1e-3, max_log_scale: float = 6.5,
                  min_log_irreducible: float = 0.5, max_exponent: float = 0.8):
    """Fits L(n) = e^E + e^A n^-alpha per domain.

    ``n``: f32[H] sample counts; ``loss``: f32[H, K]; ``mask``: bool[H] valid
    points. Returns (f32[K, 3] params (A, E, alpha), f32[K] Huber objective).
    Points with a non-positive or non-finite loss are ignored.
    """
    log_n = jnp.log(jnp.maximum(n, 1.0))
    ok = mask[:, None] & (loss > 0) & jnp.isfinite(loss) & (n[:, None] > 0)
    y = jnp.where(ok, jnp.log(jnp.where(ok, loss, 1.0)), 0.0)
    log_n = jnp.where(mask, log_n, 0.0)
    bounds = (max_log_scale, min_log_irreducible, max_exponent)
    grid = initial_grid(grid_points)

    def one_domain(y_k, m_k):
        m_k = m_k.astype(jnp.float32)
        thetas, objs = jax.vmap(
            lambda t0: _fit_from(t0, log_n, y_k, m_k, huber_delta, bounds, iterations))(grid)
        objs = jnp.where(jnp.isfinite(objs), objs, jnp.inf)
        best = jnp.argmin(objs)
        return thetas[best], objs[best]

    return jax.vmap(one_domain, in_axes=(1, 1))(y, ok)


def clip_min_probability(p, floor):
    """The reference's floor: scale so the deficit fits, floor, renormalise."""
    k = p.shape[0]
    total = jnp.sum(p)
    deficit = jnp.maximum(floor * k - total, 0.0)
    clipped = jnp.maximum(p * (1.0 - deficit) / total, floor)
    return clipped / jnp.sum(clipped)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ADO(Mixer):
    name = "ado"
    requires = frozenset({"loss", "count", "domain_id"})
    default_apply_to = "sampling"

    start_step: int = 1000
    ignore_steps: int = 1000
    refit_every: int = 1000
    record_every: int = 10
    history: int = 256
    history_decay: float = 0.9       # EMA of the realised batch composition h
    blend: float = 0.1               # pi = (1 - blend) pbar + blend rho
    min_probability: float = 0.01
    min_exponent: float = 0.05       # slope uses max(alpha, 0.05)
    grid_points: int = 4
    fit_iterations: int = 30
    huber_delta: float = 1e-3
    max_log_scale: float = 6.5
    min_log_irreducible: float = 0.5
    max_exponent: float = 0.8
    min_fit_points: int = 5
    token_counts: tuple[float, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        ints = {"start_step": self.start_step, "ignore_steps": self.ignore_steps}
        pos = {"refit_every": self.refit_every, "record_every": self.record_every,
               "history": self.history, "grid_points": self.grid_points,
               "fit_iterations": self.fit_iterations, "min_fit_points": self.min_fit_points}
        bad = [f"{k}={v}" for k, v in ints.items() if v < 0]
        bad += [f"{k}={v}" for k, v in pos.items() if v < 1]
        if not 0 <= self.history_decay < 1:
            bad.append(f"history_decay={self.history_decay}")
        if not 0 <= self.blend <= 1:
            bad.append(f"blend={self.blend}")
        if self.min_fit_points > self.history:
            bad.append(f"min_fit_points={self.min_fit_points} > history={self.history}")
        if bad:
            raise ValueError(f"mixer 'ado': invalid hyperparameter(s) {', '.join(bad)}")

    def _prior(self, k: int) -> np.ndarray:
        if self.token_counts is None:
            return np.full(k, 1.0 / k)
        n = np.asarray(self.token_counts, np.float64)
        if n.shape != (k,) or np.any(~np.isfinite(n)) or np.any(n < 0) or n.sum() <= 0:
            raise ValueError(f"mixer 'ado': token_counts must be {k} finite values >= 0, "
                             f"not all 0; got {self.token_counts}")
        return n / n.sum()

    def init(self, num_domains: int):
        k, h = num_domains, self.history
        if self.min_probability * k > 1:
            raise ValueError(f"mixer 'ado': min_probability {self.min_probability} x {k} "
                             "domains exceeds 1")
        prior = jnp.asarray(self._prior(k), jnp.float32)
        return init_state(
            prior,
            prior=prior, pbar=prior, composition=prior,
            params=jnp.zeros((k, 3), jnp.float32), has_fit=jnp.zeros((), bool),
            last_loss=jnp.zeros((k,), jnp.float32), has_loss=jnp.zeros((), bool),
            n_seen=jnp.zeros((), jnp.float32),
            block_loss=jnp.zeros((k,), jnp.float32), block_n=jnp.zeros((), jnp.float32),
            block_len=jnp.zeros((), jnp.int32),
            hist_n=jnp.zeros((h,), jnp.float32), hist_loss=jnp.zeros((h, k), jnp.float32),
            hist_valid=jnp.zeros((h,), bool), hist_pos=jnp.zeros((), jnp.int32))

    # -- pieces of the update ---------------------------------------------------
    def _record(self, s, loss_k, n, step):
        """Adds this step to the block; a full block becomes one history point."""
        on = step >= self.ignore_steps
        block_loss = s["block_loss"] + jnp.where(on, loss_k, 0.0)
        block_n = s["block_n"] + jnp.where(on, n, 0.0)
        block_len = s["block_len"] + on.astype(jnp.int32)
        full = block_len >= self.record_every
        denom = jnp.maximum(block_len, 1).astype(jnp.float32)
        pos = s["hist_pos"]
        hist_n = jnp.where(full, s["hist_n"].at[pos].set(block_n / denom), s["hist_n"])
        hist_loss = jnp.where(full, s["hist_loss"].at[pos].set(block_loss / denom),
                              s["hist_loss"])
        hist_valid = jnp.where(full, s["hist_valid"].at[pos].set(True), s["hist_valid"])
        return {
            "block_loss": jnp.where(full, 0.0, block_loss),
            "block_n": jnp.where(full, 0.0, block_n),
            "block_len": jnp.where(full, 0, block_len),
            "hist_n": hist_n, "hist_loss": hist_loss, "hist_valid": hist_valid,
            "hist_pos": jnp.where(full, (pos + 1) % self.history, pos),
        }

    def _refit(self, s, hist, step):
        due = ((step >= self.start_step) & (step % self.refit_every == 0)
               & (jnp.sum(hist["hist_valid"]) >= self.min_fit_points))

        def fit(_):
            params, _obj = fit_power_law(
                hist["hist_n"], hist["hist_loss"], hist["hist_valid"],
                grid_points=self.grid_points, iterations=self.fit_iterations,
                huber_delta=self.huber_delta, max_log_scale=self.max_log_scale,
                min_log_irreducible=self.min_log_irreducible, max_exponent=self.max_exponent)
            valid = jnp.all(jnp.isfinite(params))
            return jnp.where(valid, params, s["params"]), valid | s["has_fit"]

        return jax.lax.cond(due, fit, lambda _: (s["params"], s["has_fit"]), None)

    def _target(self, params, n, prior, composition):
        """rho: fitted learning speed x prior x sqrt(recent share), floored."""
        a, alpha = params[:, 0], params[:, 2]
        log_n = jnp.log(jnp.maximum(n, 1.0))
        slope = jnp.maximum(alpha, self.min_exponent) * jnp.exp(a - alpha * log_n - log_n)
        raw = slope * prior * jnp.sqrt(composition)
        total = jnp.sum(raw)
        ok = jnp.isfinite(total) & (total > 0)
        rho = jnp.where(ok, raw / jnp.where(ok, total, 1.0), 1.0 / raw.shape[0])
        return clip_min_probability(rho, self.min_probability)

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        counts = sequence_counts(stats["domain_id"], k)
        batch = jnp.sum(counts)
        n = state["n_seen"] + batch
        share = counts / jnp.maximum(batch, 1.0)
        composition = jnp.where(batch > 0, self.history_decay * state["composition"]
                                + (1.0 - self.history_decay) * share, state["composition"])

        present = stats["count"] > 0
        batch_mean = (jnp.sum(jnp.where(present, stats["loss"] * stats["count"], 0.0))
                      / jnp.maximum(jnp.sum(stats["count"]), 1.0))
        fallback = jnp.where(state["has_loss"], state["last_loss"], batch_mean)
        loss_k = jnp.where(present, stats["loss"], fallback)

        hist = self._record(state, loss_k, n, step)
        params, has_fit = self._refit(state, hist, step)

        rho = self._target(params, n, state["prior"], composition)
        active = (step >= self.start_step) & has_fit
        t = jnp.asarray(step, jnp.float32)
        pi = jnp.where(active, (1.0 - self.blend) * state["pbar"] + self.blend * rho,
                       state["weights"])
        pbar = jnp.where(active, (1.0 - 1.0 / (t + 1.0)) * state["pbar"] + rho / (t + 1.0),
                         state["pbar"])
        return record_weights(
            state, pi / jnp.sum(pi), **hist, params=params, has_fit=has_fit, pbar=pbar,
            composition=composition, last_loss=loss_k, has_loss=jnp.ones((), bool),
            n_seen=n)
