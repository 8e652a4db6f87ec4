"""Per-domain reductions of per-token / per-sequence statistics (pure jnp).

Shared by the train step, the gradient engine, Fish and the loss-signal
mixers (DoReMi, tDRO, ADO, ODM). Every reduction runs over the whole batch
axis (segment sums / one-hot contractions), so under a sharded batch it is a
global-batch quantity (XLA inserts the cross-device reduction).
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


def domain_totals(token_values: Array, token_mask: Array, domain_id: Array,
                  num_domains: int) -> tuple[Array, Array]:
    """Per-domain masked sums: (f32[K] sum of counted values, f32[K] counted tokens).

    ``total_d = sum_{b: dom(b)=d} sum_t [m_bt > 0] v_bt`` and ``count_d = sum m_bt``
    over the same rows; values at uncounted positions (padding) never enter, even
    when they are NaN. ``token_values``/``token_mask`` are [B, S] (or [B] for one
    value per sequence). Sums add, so micro-batch totals combine by addition
    (``mixjax.mixing.grads``' jvp path). The one per-domain reduction of the code base:
    the train step's ``loss``/``count``/``ref_loss``, the gradient engine's loss
    vector, DoReMi's excess loss and Fish's token counts all call it.
    """
    mask = token_mask.astype(jnp.float32)
    values = jnp.where(mask > 0, token_values.astype(jnp.float32), 0.0)
    if values.ndim > 1:
        values, mask = values.sum(axis=-1), mask.sum(axis=-1)
    total = jax.ops.segment_sum(values, domain_id, num_segments=num_domains)
    count = jax.ops.segment_sum(mask, domain_id, num_segments=num_domains)
    return total, count


def domain_mean(token_values: Array, token_mask: Array, domain_id: Array,
                num_domains: int) -> tuple[Array, Array]:
    """Mean over all counted tokens of each domain: (f32[K] mean, f32[K] token count).

    ``mean_d = total_d / count_d`` of :func:`domain_totals`; domains without
    counted tokens get mean 0 and count 0.
    """
    total, count = domain_totals(token_values, token_mask, domain_id, num_domains)
    return safe_ratio(total, count), count


def safe_ratio(total: Array, count: Array) -> Array:
    """``total / count`` where ``count > 0``, else 0."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


# The name the loss-signal mixers were written against.
domain_token_mean = domain_mean


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
