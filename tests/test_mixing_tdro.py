"""tDRO update rule against a hand-computed example."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import mixing


def test_tdro_ratio_clip_and_ascent_by_hand():
    m = mixing.get("tdro", step_size=0.5, ref_norm_p=0)
    assert m.apply_to == "loss"
    stats = {
        "token_loss": jnp.array([[2.0, 2.0], [4.0, 4.0], [1.0, 1.0]]),
        "ref_token_loss": jnp.array([[1.0, 1.0], [2.0, 2.0], [5e-5, 5e-5]]),
        "token_mask": jnp.ones((3, 2)),
        "domain_id": jnp.array([0, 0, 1], jnp.int32),
    }
    s = jax.jit(m.update)(m.init(3), stats, jnp.int32(1))
    # ratios 2, 2 (domain 0) and 1 / 1 (ref < 1e-4 -> 1) for domain 1; domain 2 absent: 0.
    g = np.array([2.0, 1.0, 0.0])
    g = g / np.sqrt(5.0)                              # clipped to norm 1
    z = np.log(np.full(3, 1 / 3)) + 0.5 * g
    np.testing.assert_allclose(m.weights(s), np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    np.testing.assert_allclose(np.exp(s["logits"]), m.weights(s), rtol=1e-6)


def test_tdro_small_gradient_is_not_clipped():
    m = mixing.get("tdro", step_size=1.0, max_grad_norm=10.0, ref_norm_p=0)
    stats = {"token_loss": jnp.array([[1.0], [3.0]]), "ref_token_loss": jnp.array([[2.0], [2.0]]),
             "token_mask": jnp.ones((2, 1)), "domain_id": jnp.array([0, 1], jnp.int32)}
    s = m.update(m.init(2), stats, jnp.int32(1))
    z = np.array([0.5, 1.5])
    np.testing.assert_allclose(m.weights(s), np.exp(z) / np.exp(z).sum(), rtol=1e-6)


def _reference_tdro_step(logits, proxy, ref, domain_id, k, lr, max_norm, p_norm):
    """numpy statement of tdro-llm/tdro modeling_group_dro_v2.compute_group_dro_loss
    (normalize_group_loss_scale_with_ref_loss branch) and the alpha update of its
    trainer: normalise ref over the batch (p-norm), floor < 1e-4 to 1, ratio, clamp,
    per-domain mean, clip the gradient by norm, log-softmax ascent."""
    ref = ref.copy()
    if p_norm > 0:
        ref = ref / max(np.sum(np.abs(ref) ** p_norm) ** (1 / p_norm), 1e-12)
    ref[ref < 1e-4] = 1.0
    ratio = np.maximum(proxy / ref, 0.0)
    g = np.zeros(k)
    for d in range(k):
        if np.any(domain_id == d):
            g[d] = ratio[domain_id == d].mean()
    norm = np.linalg.norm(g)
    g = g * min(1.0, max_norm / norm)
    z = logits + lr * g
    return z - np.log(np.exp(z).sum())


def test_tdro_normalises_reference_losses_like_the_reference_code():
    rng = np.random.default_rng(0)
    b, s, k = 12, 5, 4
    token_loss = rng.uniform(1, 6, (b, s)).astype(np.float32)
    ref_token = rng.uniform(1, 6, (b, s)).astype(np.float32)
    ref_token[3] = 1e-6      # a near-zero reference loss: floored after normalisation
    dom = rng.integers(0, k - 1, b).astype(np.int32)   # domain k-1 absent
    stats = {"token_loss": jnp.asarray(token_loss), "ref_token_loss": jnp.asarray(ref_token),
             "token_mask": jnp.ones((b, s)), "domain_id": jnp.asarray(dom)}
    for p_norm in (1, 2, 0):
        m = mixing.get("tdro", step_size=0.3, ref_norm_p=p_norm)
        assert mixing.get("tdro").ref_norm_p == 1     # the reference's default
        state = m.init(k)
        want = np.log(np.full(k, 1 / k))
        for step in range(3):
            state = jax.jit(m.update)(state, stats, jnp.int32(step))
            want = _reference_tdro_step(want, token_loss.mean(1), ref_token.mean(1), dom, k,
                                        0.3, 1.0, p_norm)
            np.testing.assert_allclose(np.asarray(state["logits"]), want, rtol=1e-5, atol=1e-6)
    # the two conventions differ on this batch (the normalisation is not a no-op)
    a = mixing.get("tdro", ref_norm_p=1)
    c = mixing.get("tdro", ref_norm_p=0)
    assert not np.allclose(a.update(a.init(k), stats, 0)["weights"],
                           c.update(c.init(k), stats, 0)["weights"])
