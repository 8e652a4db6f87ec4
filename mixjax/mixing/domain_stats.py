"""Per-domain reductions of per-token / per-sequence statistics (pure jnp).

Shared by the loss-signal mixers (DoReMi, tDRO, ADO, ODM). Everything is a
one-hot contraction over the batch axis, so under a sharded batch it is a
global-batch quantity (XLA inserts the reduction) and it jits to a few small
matmuls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Caps that keep extreme-but-finite statistics from overflowing f32 in sums and
# exponents. Real LM losses are < 20 nats/token, so no realistic run reaches
# them; they only make the "weights are always finite" guarantee hold for
# adversarial inputs (1e38 losses).
VALUE_CAP = 1e30        # per-element statistic magnitude
LOGIT_STEP_CAP = 1e4    # one step's change of a log-weight (e^-1e4 is 0 in f32)


def one_hot(domain_id: Array, num_domains: int) -> Array:
    """f32[B, K]: row b is the indicator of sequence b's domain (0 row if out of range)."""
    return (domain_id[:, None] == jnp.arange(num_domains)[None, :]).astype(jnp.float32)


def sequence_counts(domain_id: Array, num_domains: int) -> Array:
    """f32[K]: number of sequences of each domain in the batch."""
    return jnp.sum(one_hot(domain_id, num_domains), axis=0)


def sequence_means(token_values: Array, token_mask: Array) -> tuple[Array, Array]:
    """(f32[B] masked mean per sequence, f32[B] token count per sequence); 0 for empty rows."""
    mask = token_mask.astype(jnp.float32)
    count = jnp.sum(mask, axis=-1)
    total = jnp.sum(jnp.where(mask > 0, token_values, 0.0), axis=-1)
    return total / jnp.maximum(count, 1.0), count


def domain_token_mean(token_values: Array, token_mask: Array, domain_id: Array,
                      num_domains: int) -> tuple[Array, Array]:
    """Mean over all counted tokens of each domain: (f32[K] mean, f32[K] token count).

    Domains without counted tokens get mean 0 and count 0.
    """
    mask = token_mask.astype(jnp.float32)
    seq_total = jnp.sum(jnp.where(mask > 0, token_values, 0.0), axis=-1)
    seq_count = jnp.sum(mask, axis=-1)
    oh = one_hot(domain_id, num_domains)
    total = oh.T @ seq_total
    count = oh.T @ seq_count
    return total / jnp.maximum(count, 1.0), count


def domain_sequence_mean(values: Array, domain_id: Array, num_domains: int,
                         valid: Array | None = None) -> tuple[Array, Array]:
    """Mean of per-sequence ``values`` within each domain: (f32[K] mean, f32[K] n sequences)."""
    oh = one_hot(domain_id, num_domains)
    if valid is not None:
        oh = oh * valid.astype(jnp.float32)[:, None]
    total = oh.T @ jnp.where(jnp.sum(oh, axis=1) > 0, values, 0.0)
    count = jnp.sum(oh, axis=0)
    return total / jnp.maximum(count, 1.0), count


def stable_norm(x: Array) -> Array:
    """Euclidean norm that does not overflow for entries near the f32 maximum."""
    scale = jnp.max(jnp.abs(x))
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.where(scale > 0, safe * jnp.sqrt(jnp.sum((x / safe) ** 2)), 0.0)
