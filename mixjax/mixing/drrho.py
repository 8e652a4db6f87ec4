"""DRRho: model steering with a reference model, per-sequence DRO weights.

Wei, Lin, Ye, Song, Cao, Thai, Yang, "Model Steering: Learning with a Reference
Model Improves Generalization Bounds and Scaling Laws", arXiv 2505.06699. The
DRRho risk (section 4) of a target model theta with a trained reference model
theta_ref over data z_1..z_n is the KL-regularised distributionally robust
risk of the *excess* loss::

    F(theta) = max_{p in simplex} sum_i p_i (l(theta, z_i) - l(theta_ref, z_i)) - tau KL(p || 1/n)
             = tau log (1/n) sum_i exp((l(theta, z_i) - l(theta_ref, z_i)) / tau)

whose gradient is ``sum_i p_i grad l(theta, z_i)`` with the maximiser
``p_i = exp(d_i / tau) / sum_j exp(d_j / tau)``, ``d_i = l_i - l_ref,i`` (the
reference term is constant in theta). Reference code:
``Optimization-AI/DRRho-CLIP`` commit 4c711d24, ``src/fast_clip/loss.py``
``FastCLIPLoss.pairwise_loss`` (subtracts the reference model's pairwise
similarities from the target's, ``diff = diff - ref_diff``) and ``forward``
(``weight = exp(diff - u)`` under ``no_grad``, ``u`` a moving estimate of the
log-partition with ``gamma``; ``loss = sum(diff * weight) / (n - 1)``): there the
data points are CLIP's negative pairs and tau is the contrastive temperature.

For a language model the data points are the B sequences of a batch, l_b the mean
token loss of sequence b (``sample_loss``) and l_ref,b the reference's
(``ref_sample_loss``; ``train.reference`` names the reference run). The mixer gives the
train step per-sequence weights ``s = B softmax(d / tau)`` (mean 1), which multiply the
token weights of the objective (``mixjax.core.step``, hook ``example_weights``). Our
choices:

* The normaliser is the batch's own (the reference's gamma = 1): mixjax's objective
  divides by ``sum_b s_b r_d(b) sum_t m``, so any common factor of the weights (the
  reference's moving ``u``) cancels; a moving ``u`` only matters with unnormalised
  losses.
* tau = 1.0 (nats): a sequence whose excess loss is 1 nat above another's gets e times
  its weight. The weights are bounded by B.
* Domain weights are left at their initial value (uniform), with ``apply_to =
  "sampling"``: the domains are sampled as by ``uniform``, and the DRRho weighting acts
  within each batch. The state keeps ``domain_mass`` f32[K], the share of the batch's
  sequence weight each domain received (a diagnostic of where the excess loss is), and
  its running sum ``mass_sum`` over ``mass_steps`` updates.
* A sequence whose losses are not finite keeps weight 1 and is left out of the
  softmax (as in :mod:`mixjax.mixing.sample_reweight`); an all-pad sequence has
  d = 0 and no tokens, so its weight does not matter.
* ``burn_in`` (default 0) steps with every weight 1, for a reference that only beats
  the target model once it has learnt the basics.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mixjax.mixing import domain_stats
from mixjax.mixing.base import Mixer, register


def drrho_weights(sample_loss, ref_sample_loss, tau: float):
    """``s`` f32[B] = B softmax((l - l_ref) / tau) over the finite entries (others: 1)."""
    d = (sample_loss - ref_sample_loss).astype(jnp.float32)
    ok = jnp.isfinite(d)
    n_ok = jnp.sum(ok)
    z = jnp.where(ok, d / tau, -jnp.inf)
    z = z - jnp.max(jnp.where(ok, z, -jnp.inf))
    e = jnp.where(ok, jnp.exp(jnp.where(ok, z, 0.0)), 0.0)
    s = n_ok * e / jnp.maximum(jnp.sum(e), 1e-30)
    return jnp.where(ok, s, 1.0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class DRRho(Mixer):
    name = "drrho"
    requires = frozenset({"sample_loss", "ref_sample_loss", "domain_id"})
    default_apply_to = "sampling"
    example_weighting = True

    tau: float = 1.0
    burn_in: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.tau > 0:
            raise ValueError(f"mixer 'drrho': tau must be > 0, got {self.tau}")
        if self.burn_in < 0:
            raise ValueError(f"mixer 'drrho': burn_in must be >= 0, got {self.burn_in}")

    def init(self, num_domains):
        state = super().init(num_domains)
        return {**state, "domain_mass": jnp.full((num_domains,), 1.0 / num_domains, jnp.float32),
                "mass_sum": jnp.zeros((num_domains,), jnp.float32),
                "mass_steps": jnp.zeros((), jnp.float32),
                "active": jnp.asarray(self.burn_in <= 0)}   # past burn_in (set by update)

    def update(self, state, stats, step):
        s = self._weights(stats, step)
        k = state["weights"].shape[0]
        mass = domain_stats.domain_totals(s, jnp.ones_like(s), stats["domain_id"], k)[0]
        mass = mass / jnp.maximum(jnp.sum(mass), 1e-30)
        return {**state, "domain_mass": mass, "mass_sum": state["mass_sum"] + mass,
                "mass_steps": state["mass_steps"] + 1.0, "active": jnp.asarray(step >= self.burn_in)}

    def example_weights(self, state, stats):
        """The step's s_b, from the updated state (``active``: this step is past burn_in)."""
        s = drrho_weights(stats["sample_loss"], stats["ref_sample_loss"], self.tau)
        return jnp.where(state["active"], s, jnp.ones_like(s))

    def _weights(self, stats, step):
        s = drrho_weights(stats["sample_loss"], stats["ref_sample_loss"], self.tau)
        return jnp.where(step < self.burn_in, jnp.ones_like(s), s)
