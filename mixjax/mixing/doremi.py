"""DoReMi: domain reweighting with minimax optimisation (the proxy-model step).

Xie, Pham, Dong, Du, Liu, Lu, Liang, Le, Ma, Yu. "DoReMi: Optimizing Data
Mixtures Speeds Up Language Model Pretraining" (NeurIPS 2023, arXiv
2305.10429); reference code ``sangmichaelxie/doremi: doremi/trainer.py``
(``update_domain_weights``, doremiv1, commit 7cde52d).

Every step, with l_theta / l_ref the per-token losses of the proxy and of the
fixed reference model, T_i the counted tokens of domain i in the (global)
batch, u the uniform vector, eta the step size and c the smoothing::

    lambda_i = 1/|T_i| * sum_{t in T_i} max(l_theta(t) - l_ref(t), 0)   (|T_i| > 0)
    lambda_i = previous lambda_i                                         (|T_i| = 0)
    alpha'   = softmax(log alpha_{t-1} + eta * lambda)
    alpha_t  = (1 - c) * alpha' + c * u

The proxy is trained on sum_i alpha_i * L_i: ``apply_to = "loss"`` (the
trainer weights domain-i tokens by alpha_i / p_i with p the sampling weights,
uniform in the reference, i.e. the reference's (alpha_d/s_d) normalisation).
The output mixture for the final model is ``average``: the running mean of
alpha_t that includes alpha_0, as in the reference.

Defaults: ``eta`` = 1.0 (reference ``reweight_eta``), ``smoothing`` c = 1e-3
(paper and the shipped Pile scripts; the argparse default ``reweight_eps`` is
1e-4), alpha_0 = uniform.

Initial alpha: the reference reads alpha_0 from its domain config
(``train_domain_weights`` of ``configs/*.json``, normalised; ``doremi/train.py``).
``initial_weights`` gives it here, either ``{domain: weight}`` (every training
domain named) or a sequence in domain order; it is normalised to sum 1. The
smoothing still mixes towards the uniform u, as the reference does.

Initial score: the reference starts lambda at ln|V| (``train.py``), which
matters only for domains absent from the first batches (they are upweighted
until they appear). Set ``vocab_size`` to get that; with ``vocab_size=None``
lambda_0 = 0 (Levanter's DoReMi also scores absent domains 0), which does not
boost a domain before it was seen.

Deviation for robustness only: per-token excess is capped at 1e30 and one
step's change of log alpha at 1e4, so huge finite losses still give finite
weights; no realistic loss reaches the caps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, check_weight_vector, init_state, record_weights, register
from mixjax.mixing.domain_stats import LOGIT_STEP_CAP, VALUE_CAP, domain_token_mean


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class DoReMi(Mixer):
    name = "doremi"
    requires = frozenset({"token_loss", "ref_token_loss", "token_mask", "domain_id"})
    default_apply_to = "loss"

    eta: float = 1.0
    smoothing: float = 1e-3
    vocab_size: int | None = None
    initial_weights: Mapping[str, float] | Sequence[float] | None = None
    domains: tuple[str, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if not self.eta >= 0:
            raise ValueError(f"mixer 'doremi': eta must be >= 0, got {self.eta}")
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"mixer 'doremi': smoothing must be in [0, 1], got {self.smoothing}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"mixer 'doremi': vocab_size must be >= 2, got {self.vocab_size}")
        if self.initial_weights is not None and self.domains is not None:
            self.initial_alpha(len(self.domains))   # a clear error before anything compiles

    def initial_alpha(self, num_domains: int) -> np.ndarray:
        """alpha_0 (f64[K], sums to 1): ``initial_weights`` normalised, else uniform."""
        iw = self.initial_weights
        if iw is None:
            return np.full(num_domains, 1.0 / num_domains)
        what = "mixer 'doremi': hyperparameter 'initial_weights'"
        if isinstance(iw, Mapping):
            if self.domains is None:
                raise ValueError(f"{what}: a {{domain: weight}} mapping needs the domain names")
            unknown = sorted(set(iw) - set(self.domains))
            missing = [d for d in self.domains if d not in iw]
            if unknown or missing:
                raise ValueError(f"{what}: unknown domains {unknown}, missing domains {missing}; "
                                 f"training domains: {list(self.domains)}")
            raw = np.asarray([float(iw[d]) for d in self.domains], np.float64)
        else:
            raw = np.asarray([float(x) for x in iw], np.float64)
        if raw.shape != (num_domains,) or not np.all(np.isfinite(raw)) or np.any(raw < 0) \
                or raw.sum() <= 0:
            raise ValueError(f"{what}: need {num_domains} finite weights >= 0, not all 0; "
                             f"got {iw}")
        return check_weight_vector(raw / raw.sum(), self.domains, what)

    def init(self, num_domains: int):
        w = jnp.asarray(self.initial_alpha(num_domains), jnp.float32)
        score0 = math.log(self.vocab_size) if self.vocab_size else 0.0
        return init_state(w, scores=jnp.full((num_domains,), score0, jnp.float32))

    def update(self, state, stats, step):
        del step
        k = state["weights"].shape[0]
        excess = jnp.clip(stats["token_loss"] - stats["ref_token_loss"], 0.0, VALUE_CAP)
        mean, count = domain_token_mean(excess, stats["token_mask"], stats["domain_id"], k)
        scores = jnp.where(count > 0, mean, state["scores"])
        step_ = jnp.minimum(self.eta * scores, LOGIT_STEP_CAP)
        new = jax.nn.softmax(jnp.log(state["weights"]) + step_)
        w = (1.0 - self.smoothing) * new + self.smoothing / k
        return record_weights(state, w, scores=scores)
