"""The nnx transformer LM: shapes, parameter count, causality, dtypes, axis names, purity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.models import transformer as T

CFG = T.TransformerConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4)


def test_shapes_and_exact_param_count():
    for cfg in (CFG, T.TransformerConfig(vocab_size=40, d_model=32, num_layers=1, num_heads=2,
                                         mlp="gelu", tie_embeddings=False, d_ff=48)):
        apply, params, axes = T.init(cfg, seed=0)
        logits = jax.jit(apply)(params, jnp.zeros((3, 7), jnp.int32))
        assert logits.shape == (3, 7, 40) and logits.dtype == jnp.float32
        assert T.count_params(params) == cfg.num_params()
        assert ("unembed" in params) == (not cfg.tie_embeddings)


def test_every_param_has_logical_axes_matching_its_rank():
    _, params, axes = T.init(CFG, seed=0)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple)))
    allowed = {"vocab", "embed", "heads", "head_dim", "mlp", "norm"}
    for path, leaf in flat_p:
        names = flat_a[path]
        assert len(names) == leaf.ndim, (path, names)
        assert set(names) <= allowed, names
    assert axes["embed"] == ("vocab", "embed")
    assert axes["blocks"][0]["mlp"]["w_up"] == ("embed", "mlp")


def test_causal_future_tokens_do_not_change_past_logits():
    apply, params, _ = T.init(CFG, seed=1)
    apply = jax.jit(apply)
    x = jax.random.randint(jax.random.key(0), (2, 10), 0, 40)
    y = x.at[:, 6:].set((x[:, 6:] + 5) % 40)
    a, b = apply(params, x), apply(params, y)
    np.testing.assert_array_equal(np.asarray(a[:, :6]), np.asarray(b[:, :6]))
    assert not np.allclose(np.asarray(a[:, 6:]), np.asarray(b[:, 6:]))


def test_bf16_compute_keeps_fp32_params_and_logits_close_to_fp32():
    cfg16 = T.TransformerConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4,
                                dtype="bfloat16")
    apply32, params, _ = T.init(CFG, seed=2)
    apply16, params16, _ = T.init(cfg16, seed=2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
    x = jax.random.randint(jax.random.key(1), (2, 8), 0, 40)
    l32, l16 = jax.jit(apply32)(params, x), jax.jit(apply16)(params16, x)
    assert l16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=0.05)


def test_apply_is_pure_under_jit_grad_vmap_jvp():
    apply, params, _ = T.init(CFG, seed=3)
    x = jax.random.randint(jax.random.key(2), (4, 6), 0, 40)

    def loss(p, toks):
        return jnp.mean(apply(p, toks) ** 2)

    g = jax.jit(jax.grad(loss))(params, x)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    per_ex = jax.jit(jax.vmap(lambda t: loss(params, t[None])))(x)
    np.testing.assert_allclose(float(per_ex.mean()), float(jax.jit(loss)(params, x)), rtol=1e-5)
    # jvp along the gradient equals ||g||^2
    _, tangent = jax.jit(lambda p, t: jax.jvp(lambda q: loss(q, x), (p,), (t,)))(params, g)
    sq = sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(g))
    np.testing.assert_allclose(float(tangent), sq, rtol=1e-4)


def test_bad_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="num_heads"):
        T.TransformerConfig(vocab_size=10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="mlp"):
        T.TransformerConfig(vocab_size=10, mlp="relu")


def test_rope_rotation_preserves_norm_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    r = T.rope(x, 10000.0)
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r[:, 0]), np.asarray(x[:, 0]), rtol=1e-6)  # position 0


def test_abstract_init_allocates_nothing_and_matches_shapes():
    big = T.TransformerConfig(vocab_size=50304, d_model=2048, num_layers=16, num_heads=16)
    _, abstract, _ = T.abstract_init(big)
    leaves = jax.tree.leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    assert n == big.num_params() and 0.9e9 < n < 1.1e9   # the ~1B pod model
