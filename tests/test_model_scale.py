"""Scanned layers and rematerialisation: same function, same gradients, other memory layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.models import transformer as T

BASE = dict(vocab_size=32, d_model=16, num_layers=3, num_heads=2)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 9)), jnp.int32)


def loss(apply):
    def f(params):
        logits = apply(params, TOKENS[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, TOKENS[:, 1:, None], -1).mean()
    return f


def test_scan_layout_stacks_blocks_with_a_layers_axis():
    _, params, axes = T.init(T.TransformerConfig(**BASE, scan_layers=True), 0)
    assert "blocks" not in params
    assert params["layers"]["attn"]["wq"].shape == (3, 16, 2, 8)
    assert axes["layers"]["attn"]["wq"] == ("layers", "embed", "heads", "head_dim")
    assert axes["layers"]["mlp_norm"]["scale"] == ("layers", "norm")
    # layers get different init keys
    wq = np.asarray(params["layers"]["attn"]["wq"])
    assert not np.allclose(wq[0], wq[1])
    assert T.count_params(params) == T.TransformerConfig(**BASE).num_params()


def test_default_layout_is_unchanged():
    _, params, _ = T.init(T.TransformerConfig(**BASE), 0)
    assert sorted(params) == ["blocks", "embed", "final_norm"]
    assert sorted(params["blocks"]) == [0, 1, 2]


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_forward_equals_loop_forward_on_the_same_params(remat):
    apply_loop, params, _ = T.init(T.TransformerConfig(**BASE), 0)
    apply_scan, _, _ = T.init(T.TransformerConfig(**BASE, scan_layers=True, remat=remat), 1)
    stacked = T.stack_blocks(params)
    np.testing.assert_allclose(np.asarray(apply_scan(stacked, TOKENS)),
                               np.asarray(apply_loop(params, TOKENS)), rtol=1e-5, atol=1e-6)
    back = T.unstack_blocks(stacked)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, params)


def test_remat_policies_give_the_same_gradients():
    apply, params, _ = T.init(T.TransformerConfig(**BASE), 0)
    want = jax.jit(jax.grad(loss(apply)))(params)
    stacked_want = T.stack_blocks(want)
    for scan, remat in ((False, "full"), (True, "dots"), (True, "full")):
        apply_r, _, _ = T.init(T.TransformerConfig(**BASE, scan_layers=scan, remat=remat), 0)
        p = T.stack_blocks(params) if scan else params
        got = jax.jit(jax.grad(loss(apply_r)))(p)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     got, stacked_want if scan else want)


def test_remat_full_keeps_fewer_residuals(xla_optimised):
    """The compiled backward of remat=full holds less temporary memory than remat=none."""
    big = dict(BASE, d_model=32, num_heads=2, num_layers=2)
    toks = jnp.zeros((4, 65), jnp.int32)
    temp = {}
    for remat in ("none", "full"):
        apply, params, _ = T.init(T.TransformerConfig(**big, scan_layers=True, remat=remat), 0)
        f = jax.jit(jax.grad(lambda p: apply(p, toks[:, :-1]).mean()))
        temp[remat] = f.lower(params).compile().memory_analysis().temp_size_in_bytes
    assert temp["full"] < temp["none"], temp


def test_bad_remat_is_a_config_error():
    with pytest.raises(ValueError, match="model.remat must be one of"):
        T.TransformerConfig(**BASE, remat="some")
