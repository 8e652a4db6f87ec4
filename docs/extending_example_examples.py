"""Worked example of docs/extending.md, section 4: an aggregator over *examples*.

UPGrad (Quinton & Rey, arXiv 2406.16232) over the B sequences of the batch instead of
the K domains: with the per-sequence Gram ``E_ab = <g_a, g_b>`` (the registered
statistic ``example_gram``), the update is ``sum_b c_b g_b`` with
``c = sum_i v^(i)``, ``v^(i) = argmin_v v^T E v  s.t.  v >= e_i / B`` (after
normalising E by its trace), i.e. the projection of every g_b onto the dual cone
of all of them: no sequence's loss goes up to first order.
tests/test_extending_example.py trains a tiny model with it for 3 steps. The package's own
registered form of this rule is ``iwrm`` (mixjax.mixing.iwrm: all-pad rows left out, the
hyperparameters of ``upgrad``, per-domain shares of c logged).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mixjax import mixing
from mixjax.mixing import aggregators


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UPGradExamples(mixing.Mixer):
    name = "upgrad_examples"
    requires = frozenset({"example_gram"})
    model_gradient = "example_coeffs"   # the step's gradient is sum_b c_b g_b, c f32[B]
    default_apply_to = "loss"           # domain weights stay static: the sampler is untouched
    reg_eps: float = 1e-4

    def gradient_coeffs(self, state, stats):
        gram = stats["example_gram"]
        b = gram.shape[0]
        return aggregators.upgrad_weights(gram, jnp.full((b,), 1.0 / b, jnp.float32),
                                          reg_eps=self.reg_eps)
