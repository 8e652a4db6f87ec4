"""tDRO: task-level distributionally robust optimisation with a loss ratio.

Ma, Ma, Zhang, Wang, Mao, Huang, Zhang. "Task-level Distributionally Robust
Optimization for Large Language Model-based Dense Retrieval" (AAAI 2025,
arXiv 2408.10613); reference code ``tdro-llm/tdro:
src/tdro/dro/modeling_group_dro_v2.py`` (``compute_group_dro_loss``) and
``src/tdro/dro/trainer.py`` (``training_step_for_dromodelv2``), commit c27893a.

Here a "query" is a training sequence: l(x) / l_ref(x) are the mean token
losses of sequence x under the proxy and the fixed reference model. Every
step, with D_d the sequences of domain d in the (global) batch::

    n(x)  = l_ref(x) / max(||l_ref||_p, 1e-12)     (p = ``ref_norm_p``, over the batch)
    r(x)  = max(l(x) / n'(x), 0),       n' = 1 where n < 1e-4 (else n)
    G_d   = 1/|D_d| * sum_{x in D_d} r(x)         (0 if domain d is absent)
    G    <- G * min(1, max_norm / ||G||)         (gradient-norm clipping)
    z    <- log_softmax(z + lr * G)               (SGD ascent on log-weights z)
    alpha = softmax(z)

G is the gradient of the robust objective with respect to the log-weights; the
logits are reset to log-softmax after each update as in the reference. The
proxy is trained on sum_x alpha_{d(x)} l(x) / sum_x alpha_{d(x)}
(``apply_to = "loss"``). The reference outputs the *final* alpha; ``weights``
is that and ``average`` is the running mean.

The reference scales the reference losses with ``nn.functional.normalize(
loss_ref, p=p_norm_of_ref_loss, dim=0)`` over the gathered batch *before* the
1e-4 floor (``p_norm_of_ref_loss`` defaults to 1 in its ``arguments.py``;
``modeling_group_dro_v2.py``, ``normalize_group_loss_scale_with_ref_loss``
branch). ``ref_norm_p`` = 1 is that default; ``ref_norm_p`` = 0 floors the raw
reference loss (the reference with ``p_norm_of_ref_loss <= 0``). The norm runs
over the sequences with counted tokens (padding rows have l_ref = 0 and add
nothing to a p-norm).

Defaults are the reference script's: ``step_size`` lr = 0.02, ``max_grad_norm``
= 1 (clip by norm), ``ref_floor`` = 1e-4, ``ref_norm_p`` = 1. Deviations: the
reference's learning-rate scheduler for alpha is not reproduced (constant lr); torch's clip uses
max_norm / (||G|| + 1e-6), here max_norm / ||G|| exactly; the ratio is capped at
1e30 so huge losses keep the weights finite.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.mixing.base import Mixer, init_state, record_weights, register
from mixjax.mixing.domain_stats import (VALUE_CAP, domain_sequence_mean, sequence_means,
                                        stable_norm)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class TDRO(Mixer):
    name = "tdro"
    requires = frozenset({"token_loss", "ref_token_loss", "token_mask", "domain_id"})
    default_apply_to = "loss"

    step_size: float = 0.02
    max_grad_norm: float = 1.0
    ref_floor: float = 1e-4
    ref_norm_p: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.step_size >= 0:
            raise ValueError(f"mixer 'tdro': step_size must be >= 0, got {self.step_size}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"mixer 'tdro': max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.ref_norm_p < 0:
            raise ValueError(f"mixer 'tdro': ref_norm_p must be >= 0 (0: no normalisation), "
                             f"got {self.ref_norm_p}")

    def init(self, num_domains: int):
        w = jnp.full((num_domains,), 1.0 / num_domains, jnp.float32)
        return init_state(w, logits=jnp.log(w))

    def update(self, state, stats, step):
        del step
        k = state["weights"].shape[0]
        # Per-token values capped at +-VALUE_CAP (as DoReMi's excess): finite losses near
        # f32's limits must not overflow a sequence mean or the norm below into inf/inf = NaN.
        cap = lambda x: jnp.clip(x, -VALUE_CAP, VALUE_CAP)   # noqa: E731
        proxy, n_tok = sequence_means(cap(stats["token_loss"]), stats["token_mask"])
        ref, _ = sequence_means(cap(stats["ref_token_loss"]), stats["token_mask"])
        if self.ref_norm_p > 0:
            # torch.nn.functional.normalize(ref, p, dim=0): ref / max(||ref||_p, 1e-12).
            ref_abs = jnp.where(n_tok > 0, jnp.abs(ref), 0.0)
            norm = jnp.sum(ref_abs ** self.ref_norm_p) ** (1.0 / self.ref_norm_p)
            ref = ref / jnp.maximum(norm, 1e-12)
        ref = jnp.where(ref < self.ref_floor, 1.0, ref)
        ratio = jnp.clip(proxy / ref, 0.0, VALUE_CAP)
        grad, _ = domain_sequence_mean(ratio, stats["domain_id"], k, valid=n_tok > 0)
        norm = stable_norm(grad)
        grad = grad * jnp.minimum(1.0, self.max_grad_norm / jnp.maximum(norm, 1e-30))
        logits = jax.nn.log_softmax(state["logits"] + self.step_size * grad)
        return record_weights(state, jnp.exp(logits), logits=logits)
