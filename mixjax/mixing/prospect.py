"""Prospect: spectral-risk DRO with an f-divergence shift penalty, as per-sequence weights.

Mehta, Roulet, Pillutla, Harchaoui (AISTATS 2024, arXiv 2310.13863), "Distributionally
Robust Optimization with Bias and Variance Reduction"; reference code ``ronakdm/prospect``
at commit edfa3cc: the spectra ``src/optim/objectives.py`` lines 251-277
(``get_erm/extremile/superquantile/esrm_weights``), the penalised maximum
``src/optim/smoothing.py`` lines 48-161 (``get_smooth_weights_sorted``,
``l2_centered_isotonic_regression``, ``neg_entropy_centered_isotonic_regression``) and its
use on a mini-batch ``objectives.py`` lines 127-145 (``get_batch_subgrad_oracle``).

The objective over the B per-sequence losses l (mean token loss of each sequence)::

    R(l) = max_{q in P(sigma)}  q.l - nu D(q || 1/B)

``P(sigma)``: the permutahedron of the spectrum sigma (non-decreasing, sum 1; the convex hull
of its permutations), so q puts sigma's largest weights on the largest losses:

    cvar        sigma_i = 1/(B(1-a)) on the top (1-a) fraction (one fractional entry)
    extremile   sigma_i = ((i/B)^r - ((i-1)/B)^r)                          i = 1..B
    esrm        sigma_i = e^-rho (e^{rho i/B} - e^{rho (i-1)/B}) / (1 - e^-rho)
    erm         sigma_i = 1/B

``D``: ``chi2`` (B/2 ||q - 1/B||^2, i.e. the reference's l2 penalty with shift cost B nu) or
``kl`` (sum q log(B q)). The maximiser is exact (the reference's route): sort l ascending,
solve an isotonic regression of the sorted scaled losses against sigma, then

    chi2:  q_(i) = l_(i)/(B nu) - y_i + 1/B,  y = iso(l_(i)/(B nu) + 1/B - sigma_i)
    kl:    q_(i) = exp(l_(i)/nu - y_i) / B,   block value y_J = LSE_J(l/nu) - log sum_J sigma - log B

``iso`` is the non-decreasing fit the reference computes by pool-adjacent-violators; here by
the equivalent max-min formula ``y_i = max_{j<=i} min_{k>=i} value(j..k)`` (Robertson,
Wright & Dykstra 1988, Thm 1.4.4; valid for separable convex block objectives, so for both
penalties), which vectorises: O(B^3) work, no loop (B = 16..256 sequences).
``nu = 0`` gives q = sigma in loss order (the plain spectral risk).

In the step, sequence b's loss is weighted by ``s_b = B q_b`` (mean 1): the step's objective
is the s-weighted token mean, i.e. ``sum_b q_b l_b`` when sequences have equal token counts.

Scope: this is the mini-batch estimator of the penalised spectral risk (the reference's
``sgd`` baseline on Prospect's objective, ``get_batch_subgrad_oracle`` with ``idx``), biased
for a finite batch. Prospect's own algorithm removes that bias with a table of the n
per-example losses and gradients (SAGA-style); for an LM trained on a token stream there is
no fixed, revisited set of n examples, so it is left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing import base

Array = jax.Array
SPECTRA = ("cvar", "extremile", "esrm", "erm")
PENALTIES = ("chi2", "kl")


def spectrum(n: int, kind: str, param: float) -> np.ndarray:
    """The non-decreasing spectrum sigma f64[n] (sum 1) of ``kind`` with its parameter
    (cvar: the level a in [0, 1); extremile: r >= 1; esrm: rho > 0; erm: unused)."""
    i = np.arange(n, dtype=np.float64)
    if kind == "erm":
        return np.full(n, 1.0 / n)
    if kind == "extremile":
        return ((i + 1) ** param - i ** param) / n ** param
    if kind == "esrm":
        return math.exp(-param) * (np.exp(param * (i + 1) / n) - np.exp(param * i / n)) \
            / (1 - math.exp(-param))
    if kind == "cvar":
        out = np.zeros(n)
        idx = math.floor(n * param)
        frac = 1 - (n - idx - 1) / (n * (1 - param))
        if frac > 1e-12:
            out[idx], out[idx + 1:] = frac, 1 / (n * (1 - param))
        else:
            out[idx:] = 1 / (n - idx)
        return out
    raise ValueError(f"unknown spectrum {kind!r}; known: {SPECTRA}")


def _isotonic(value: Array) -> Array:
    """Non-decreasing isotonic fit from the block values ``value[j, k]`` (j <= k):
    ``y_i = max_{j<=i} min_{k>=i} value[j, k]``."""
    n = value.shape[0]
    j = jnp.arange(n)[:, None]
    k = jnp.arange(n)[None, :]
    v = jnp.where(k >= j, value, jnp.inf)
    suffix_min = jax.lax.cummin(v, axis=1, reverse=True)       # [j, i] = min_{k>=i} v[j, k]
    return jnp.max(jnp.where(j <= k, suffix_min, -jnp.inf), axis=0)


def _block_lse(x: Array) -> Array:
    """[j, k] = log sum_{j<=i<=k} exp(x_i) (-inf for j > k)."""
    n = x.shape[0]
    i = jnp.arange(n)
    inside = (i[None, None, :] >= i[:, None, None]) & (i[None, None, :] <= i[None, :, None])
    return jax.nn.logsumexp(jnp.where(inside, x[None, None, :], -jnp.inf), axis=-1)


def penalised_weights(loss: Array, sigma: Array, nu: float, penalty: str = "chi2") -> Array:
    """q f32[B] (sum 1): the maximiser of ``q.l - nu D(q || 1/B)`` over ``P(sigma)``.

    ``sigma`` non-decreasing (sum 1); ties in ``loss`` are broken by position (stable sort).
    """
    loss = jnp.asarray(loss, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    n = loss.shape[0]
    perm = jnp.argsort(loss, stable=True)
    inv = jnp.argsort(perm, stable=True)
    ls = loss[perm]
    if nu <= 0:
        return sigma[inv]
    if penalty == "chi2":
        c = ls / (n * nu) + 1.0 / n - sigma
        csum = jnp.concatenate([jnp.zeros((1,), c.dtype), jnp.cumsum(c)])
        j = jnp.arange(n)[:, None]
        k = jnp.arange(n)[None, :]
        mean = (csum[k + 1] - csum[j]) / jnp.maximum(k - j + 1, 1)
        y = _isotonic(mean)
        q = ls / (n * nu) - y + 1.0 / n
    elif penalty == "kl":
        x = ls / nu
        logs = jnp.where(sigma > 0, jnp.log(jnp.where(sigma > 0, sigma, 1.0)), -jnp.inf)
        value = _block_lse(x) - _block_lse(logs) - math.log(n)
        y = _isotonic(value)
        q = jnp.exp(x - y) / n
    else:
        raise ValueError(f"unknown Prospect penalty {penalty!r}; known: {PENALTIES}")
    return q[inv]


@base.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Prospect(base.Mixer):
    """Per-sequence weights ``B q`` of the penalised spectral risk (see the module docstring).

    Hyperparameters: ``spectrum`` (cvar / extremile / esrm / erm) and its ``level`` (cvar's
    a, extremile's r, esrm's rho), ``penalty`` (chi2 / kl) and its ``shift_cost`` nu >= 0,
    ``burn_in`` steps with every weight 1. Domain weights stay uniform (``apply_to="loss"``
    with uniform weights is the plain importance-corrected token mean); the per-sequence
    weights compose with the sampler's mixture.
    """

    name = "prospect"
    requires = frozenset({"sample_loss", "token_mask"})
    default_apply_to = "sampling"
    example_weighting = True
    spectrum: str = "extremile"
    level: float = 2.0
    penalty: str = "chi2"
    shift_cost: float = 1.0
    burn_in: int = 0

    def __post_init__(self):
        super().__post_init__()
        where = f"mixer {self.name!r}"
        if self.spectrum not in SPECTRA:
            raise ValueError(f"{where}: spectrum must be one of {SPECTRA}, got {self.spectrum!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"{where}: penalty must be one of {PENALTIES}, got {self.penalty!r}")
        ok = {"cvar": 0 <= self.level < 1, "extremile": self.level >= 1,
              "esrm": self.level > 0, "erm": True}[self.spectrum]
        if not ok:
            want = {"cvar": "in [0, 1)", "extremile": ">= 1", "esrm": "> 0"}[self.spectrum]
            raise ValueError(f"{where}: level of spectrum {self.spectrum!r} must be {want}, "
                             f"got {self.level}")
        if not (math.isfinite(self.shift_cost) and self.shift_cost >= 0):
            raise ValueError(f"{where}: shift_cost must be finite and >= 0, got {self.shift_cost}")
        if self.burn_in < 0:
            raise ValueError(f"{where}: burn_in must be >= 0, got {self.burn_in}")

    def init(self, num_domains: int) -> base.State:
        return base.init_state(jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                               step=jnp.zeros((), jnp.int32))

    def update(self, state, stats, step):
        return {**state, "step": jnp.asarray(step, jnp.int32)}

    def example_weights(self, state: base.State, stats: Mapping[str, Any]) -> Array:
        # a sequence with no counted token has loss 0 (sequence_loss) and no tokens to weight
        loss = jnp.where(jnp.sum(stats["token_mask"], axis=1) > 0,
                         jnp.asarray(stats["sample_loss"], jnp.float32), 0.0)
        n = loss.shape[0]
        sigma = jnp.asarray(spectrum(n, self.spectrum, self.level), jnp.float32)
        w = n * penalised_weights(loss, sigma, self.shift_cost, self.penalty)
        return jnp.where(state["step"] < self.burn_in, jnp.ones_like(w), w)
