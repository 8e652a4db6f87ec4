"""A tiny causal LM and domain-dependent batches for the gradient-engine tests."""

import jax
import jax.numpy as jnp
import numpy as np

V, D, H, S = 11, 8, 12, 6
PAD = 0


def init_params(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"embed": jax.random.normal(k1, (V, D)) * 0.5,
            "mix": {"w": jax.random.normal(k2, (2 * D, H)) * 0.3, "b": jnp.zeros((H,))},
            "head": {"w": jax.random.normal(k3, (H, V)) * 0.3,
                     "b": jax.random.normal(k4, (V,)) * 0.1}}


def token_loss_fn(params, batch):
    """A tiny causal LM: each position sees its token and the running mean of the prefix."""
    tokens = batch["tokens"]
    x, y = tokens[:, :-1], tokens[:, 1:]
    e = params["embed"][x]
    prefix = jnp.cumsum(e, axis=1) / jnp.arange(1, e.shape[1] + 1)[None, :, None]
    h = jnp.tanh(jnp.concatenate([e, prefix], -1) @ params["mix"]["w"] + params["mix"]["b"])
    logits = h @ params["head"]["w"] + params["head"]["b"]
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
    return loss, (y != PAD).astype(jnp.float32)


def make_batch(key, k, per_domain=None, counts=None):
    counts = counts if counts is not None else [per_domain] * k
    dom = np.repeat(np.arange(k), counts)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 1 << 30)))
    dom = rng.permutation(dom)
    tokens = rng.integers(1, V, size=(len(dom), S + 1))
    tokens[:, -2:] = np.where(rng.random((len(dom), 2)) < 0.3, PAD, tokens[:, -2:])  # some padding
    # Domain-dependent token statistics so that the gradients differ by domain.
    tokens = np.where(rng.random(tokens.shape) < 0.5, (dom[:, None] * 3) % (V - 1) + 1, tokens)
    return {"tokens": jnp.asarray(tokens, jnp.int32), "domain_id": jnp.asarray(dom, jnp.int32),
            "domain_counts": jnp.asarray(np.bincount(dom, minlength=k), jnp.int32)}
