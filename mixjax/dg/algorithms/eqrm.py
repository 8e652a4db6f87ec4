"""EQRM (Eastwood et al., "Probable domain generalization via quantile risk minimization",
NeurIPS 2022, arXiv 2207.09944, Algorithm 1), DomainBed's form (facebookresearch/DomainBed
``domainbed/algorithms.py`` ``EQRM`` and ``lib/misc.py`` ``Nonparametric``,
``KernelDensityEstimator``, ``estimate_bandwidth``, ``continuous_bisect_fun_left``; commit b93c22a).

    step <  burn-in:  L = mean_e R_e
    step >= burn-in:  L = Q_alpha(R_1..R_K), the alpha-quantile of a Gaussian KDE of the env risks:
        h = 1.06 * std_unbiased(R) * K^(-1/5)   ("Gauss-optimal" bandwidth),
        F(t) = mean_e Phi((t - R_e) / h),
        Q = bisection of F(t) = alpha on [R_min + h Phi^-1(alpha), R_max + h Phi^-1(alpha)],
            32 halvings (stopping early when the midpoint stops moving), left rule
            ``range[int(F(k) > alpha)] = k``.

The gradient flows, as in torch, through the arithmetic of the bisection (the end points
and the bandwidth), not through its comparisons. At step == burn-in Adam is re-created with
lr = eqrm_lr (used from then on). DomainBed draws the burn-in as a float
(10^U(2.5,3.5)) and tests ``update_count == burnin``, so for random draws the reset and the
switch to eqrm_lr never happen; this is reproduced (the default, 2500, is an integer).
Hyperparameters: eqrm_quantile 0.75 (U(0.5,0.99)), eqrm_burnin_iters 2500 (10^U(2.5,3.5)),
eqrm_lr 1e-6 (10^U(-7,-5)).
"""

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, env_losses, reset_where


def kde_quantile(risks: jax.Array, alpha, n_steps: int = 32) -> jax.Array:
    """DomainBed ``Nonparametric().icdf(alpha)`` after ``estimate_parameters(risks)``; risks f32[K]."""
    data = jnp.sort(risks)
    n = data.shape[0]
    bw = 1.06 * jnp.std(data, ddof=1) * n ** (-0.2)
    z = norm.ppf(alpha)
    lo, hi = data[0] + bw * z, data[-1] + bw * z

    def cdf(t):
        return norm.cdf((t - data) / bw).mean()

    def body(_, carry):
        lo, hi, k, done = carry
        above = cdf(k) > alpha
        new_lo, new_hi = jnp.where(above, lo, k), jnp.where(above, k, hi)
        nk = 0.5 * (new_lo + new_hi)
        stop = nk == k  # DomainBed breaks before moving k
        keep = done
        return (jnp.where(keep, lo, new_lo), jnp.where(keep, hi, new_hi),
                jnp.where(keep | stop, k, nk), done | stop)

    k0 = 0.5 * (lo + hi)
    return jax.lax.fori_loop(0, n_steps, body, (lo, hi, k0, jnp.zeros((), bool)))[2]


@register
class EQRM(Algorithm):
    name = "eqrm"

    @classmethod
    def own_hparams(cls, small):
        return {
            "eqrm_quantile": H.HParam(0.75, lambda r: r.uniform(0.5, 0.99)),
            "eqrm_burnin_iters": H.HParam(2500, lambda r: 10 ** r.uniform(2.5, 3.5)),
            "eqrm_lr": H.HParam(1e-6, lambda r: 10 ** r.uniform(-7, -5)),
        }

    def step_tx(self, hp, step):
        # the optimiser is re-created with eqrm_lr only at step == burn-in
        switched = step >= hp["eqrm_burnin_iters"]
        ever = switched & (jnp.floor(hp["eqrm_burnin_iters"]) == hp["eqrm_burnin_iters"])
        return adam(jnp.where(ever, hp["eqrm_lr"], hp["lr"]), hp["weight_decay"])

    def loss(self, params, hp, state, xs, ys, key):
        risks = env_losses(self.env_logits(params, xs), ys)
        burn_in = state["step"] < hp["eqrm_burnin_iters"]
        # during burn-in the quantile is not used: give it distinct dummy risks so that its
        # (discarded) value and gradient stay finite under jnp.where
        dummy = jnp.arange(risks.shape[0], dtype=risks.dtype)
        q = kde_quantile(jnp.where(burn_in, dummy, risks), hp["eqrm_quantile"])
        loss = jnp.where(burn_in, risks.mean(), q)
        return loss, {"loss": loss}

    def update(self, hp, state, xs, ys, key):
        step = state["step"]
        tx = self.step_tx(hp, step)
        opt = reset_where(step == hp["eqrm_burnin_iters"], tx.init(state["params"]), state["opt"])
        grads, aux = jax.grad(self.loss, has_aux=True)(state["params"], hp, state, xs, ys, key)
        params, opt = apply_updates(tx, grads, opt, state["params"])
        return {**state, "params": params, "opt": opt, "step": step + 1}, aux
