"""The metrics contract between a step and the run loop, in one place.

Every train step (the default mixer step, every Method in ``mixjax.methods``,
each proxy of a swarm) returns its metrics through :func:`step_metrics`, so the
loop, the logs and the non-finite guard read the same keys whatever the Method.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

# What a step's metrics always hold (step_metrics writes each of them).
METRIC_KEYS = ("step", "objective", "loss", "tokens", "domain_loss", "domain_count", "weights",
               "sampling_weights", "grad_norm", "nonfinite_domain")


def first_nonfinite(*vectors: jax.Array) -> jax.Array:
    """Index of the first domain with a non-finite entry in any vector, else -1."""
    bad = jnp.zeros(vectors[0].shape, bool)
    for v in vectors:
        bad = bad | ~jnp.isfinite(v)
    return jnp.where(bad.any(), jnp.argmax(bad), -1).astype(jnp.int32)


def step_metrics(*, step, domain_loss, domain_count, weights, sampling_weights, grad_norm,
                 nonfinite_domain, loss=None, objective=None, tokens=None, lr=None,
                 extra: Mapping[str, jax.Array] | None = None, **more) -> dict:
    """The metrics of one step (``METRIC_KEYS``, plus ``lr`` and ``extra`` when given).

    ``loss`` defaults to the token mean from the per-domain means,
    ``sum_d L_d n_d / sum_d n_d``; ``objective`` (what the step minimised) to
    ``loss``; ``tokens`` to ``sum_d n_d``. ``more`` adds method-specific arrays
    the loop reads by name (``ref_domain_loss``).
    """
    count = domain_count.astype(jnp.float32)
    n_tok = count.sum() if tokens is None else tokens
    if loss is None:
        loss = jnp.dot(domain_loss, count) / jnp.maximum(n_tok, 1.0)
    metrics = {
        "step": step, "objective": loss if objective is None else objective, "loss": loss,
        "tokens": n_tok, "domain_loss": domain_loss, "domain_count": count,
        "weights": weights, "sampling_weights": sampling_weights.astype(jnp.float32),
        "grad_norm": grad_norm, "nonfinite_domain": nonfinite_domain,
    }
    if lr is not None:
        metrics["lr"] = jnp.asarray(lr, jnp.float32)
    if extra:
        metrics["extra"] = dict(extra)
    metrics.update(more)
    return metrics
