"""Controls for the IWRM runs of docs/selection.md, as a plugin (``--plugin iwrm_controls``).

``uniform_examples_check``: the model gradient ``sum_b c_b g_b`` with c = 1/B through the same
per-example engine and sampler as ``iwrm`` (a plain mean of the per-sequence gradients);
``uniform_examples_scaled_check``: c = scale/B (iwrm's c sum to about 1.3).

    PYTHONPATH=.:experiments mixjax train configs/lm_tiny_iwrm.py --plugin iwrm_controls \\
        --set mixing.name=uniform_examples_check --set mixing.hparams={} --set train.seed=S
"""

import dataclasses

import jax.numpy as jnp

from mixjax import mixing


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UniformExamples(mixing.Mixer):
    name = "uniform_examples_check"
    requires = frozenset({"example_gram"})
    model_gradient = "example_coeffs"
    default_apply_to = "loss"

    def gradient_coeffs(self, state, stats):
        b = stats["example_gram"].shape[0]
        return jnp.full((b,), 1.0 / b, jnp.float32)


@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaledUniformExamples(UniformExamples):
    name = "uniform_examples_scaled_check"
    scale: float = 1.3

    def gradient_coeffs(self, state, stats):
        b = stats["example_gram"].shape[0]
        return jnp.full((b,), self.scale / b, jnp.float32)
