"""Pod-scale initialisation on 8 fake CPU devices (``fsdp=8``).

The parameters and the optimiser state are created by one jitted call with
``out_shardings`` from the abstract shapes: no device ever holds an unsharded
parameter. Checked three ways: the per-device bytes of every array after init,
the compiled init's output shardings and XLA memory analysis (what is live on a
device *during* init), for a small model run for real and for the 1B TPU config
compiled only (its fp32 state does not fit this machine 8 times over).
"""

from __future__ import annotations

import importlib.util
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax.parallel import activations, sharding
from mixjax.models import transformer as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
FSDP = 8


def mesh8():
    return sharding.make_mesh(1, FSDP, 1)


def expected_shard_bytes(x, names):
    """What one device should hold: the global bytes / fsdp when the rules shard a dimension."""
    sharded = any(n == "embed" for n in names) and x.shape[list(names).index("embed")] % FSDP == 0
    return x.nbytes // FSDP if sharded else x.nbytes


def check_every_array_sharded(params, axes):
    seen = 0
    for (path, x), names in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, tuple))):
        want = expected_shard_bytes(x, names)
        per_device = {s.data.nbytes for s in x.addressable_shards}
        assert per_device == {want}, (jax.tree_util.keystr(path), per_device, want)
        if "embed" in names:   # every weight matrix is split; only norm scales are replicated
            assert want < x.nbytes, jax.tree_util.keystr(path)
            seen += 1
    return seen


def test_sharded_init_creates_every_parameter_in_its_shards(xla_optimised):
    cfg = T.TransformerConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4,
                              scan_layers=True)
    _, abstract, axes = T.abstract_init(cfg)
    params, shardings = sharding.init_params_sharded(lambda: T.init_params(cfg, 3), axes, mesh8())
    assert check_every_array_sharded(params, axes) >= 8
    # same values as the eager single-device init, bit for bit (the init's optimisation
    # barrier keeps XLA from folding the std into the normal sampler)
    _, eager, _ = T.init(cfg, 3)
    jax.tree.map(np.testing.assert_array_equal, params, eager)

    # during init: the compiled init's outputs are the rule shardings and nothing on a
    # device (outputs + temporaries) reaches the size of the whole model
    compiled = jax.jit(lambda: T.init_params(cfg, 3), out_shardings=shardings).lower().compile()
    for got, want, x in zip(jax.tree.leaves(compiled.output_shardings),
                            jax.tree.leaves(shardings), jax.tree.leaves(abstract)):
        assert got.is_equivalent_to(want, x.ndim)
    mem = compiled.memory_analysis()
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert mem.output_size_in_bytes < 0.2 * total
    assert mem.temp_size_in_bytes + mem.output_size_in_bytes < 0.5 * total


def test_train_state_init_from_a_params_function_is_born_sharded():
    cfg = T.TransformerConfig(vocab_size=64, d_model=64, num_layers=1, num_heads=4)
    _, _, axes = T.abstract_init(cfg)
    tx = optax.adamw(1e-3)

    def init_fn(p):
        return {"params": p, "opt_state": tx.init(p), "step": jnp.zeros((), jnp.int32)}

    state, _ = sharding.init_state_sharded(init_fn, lambda: T.init_params(cfg, 0), axes, mesh8())
    check_every_array_sharded(state["params"], axes)
    check_every_array_sharded(state["opt_state"][0].mu, axes)
    check_every_array_sharded(state["opt_state"][0].nu, axes)


def _config_1b():
    spec = importlib.util.spec_from_file_location("lm_1b_tpu", ROOT / "configs/lm_1b_tpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.get_config().model
    return T.TransformerConfig(vocab_size=50257, d_model=m.d_model, num_layers=m.num_layers,
                               num_heads=m.num_heads, d_ff=m.d_ff, mlp=m.mlp,
                               tie_embeddings=m.tie_embeddings, dtype=m.dtype,
                               param_dtype=m.param_dtype, scan_layers=True)


def test_1b_init_compiles_to_fsdp_shards_without_an_unsharded_parameter(xla_optimised):
    """configs/lm_1b_tpu.py (1.28B params, fp32 params + AdamW moments = 15 GB): compiled
    only. Per device: a 1/8 shard of everything, and less temporary memory than the
    largest single parameter."""
    cfg = _config_1b()
    _, abstract, axes = T.abstract_init(cfg)
    n = T.count_params(abstract)
    assert 1.2e9 < n < 1.4e9
    mesh = mesh8()
    tx = optax.adamw(1e-3)

    def init_fn():
        p = T.init_params(cfg, 0)
        return {"params": p, "opt_state": tx.init(p)}

    shapes = jax.eval_shape(init_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sharding.ShardingFallbackWarning)   # no fallback here
        sh = sharding.train_state_shardings(shapes, axes, mesh)
    compiled = jax.jit(init_fn, out_shardings=sh).lower().compile()
    for (path, got), x in zip(jax.tree_util.tree_leaves_with_path(compiled.output_shardings),
                              jax.tree.leaves(shapes)):
        if x.ndim >= 2 and "norm" not in jax.tree_util.keystr(path):   # every weight matrix
            assert got.shard_shape(x.shape) != x.shape, jax.tree_util.keystr(path)
    mem = compiled.memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    largest = max(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert mem.output_size_in_bytes <= state_bytes / FSDP * 1.01
    assert mem.temp_size_in_bytes < largest, (mem.temp_size_in_bytes, largest)


def test_fallback_to_replication_warns_naming_parameter_and_dimension():
    cfg = T.TransformerConfig(vocab_size=60, d_model=64, num_layers=1, num_heads=2)
    _, abstract, axes = T.abstract_init(cfg)
    mesh = sharding.make_mesh(1, 1, 8)        # 2 heads and 60 vocab rows cannot split 8 ways
    with pytest.warns(sharding.ShardingFallbackWarning) as rec:
        sh = sharding.shape_aware_param_shardings(abstract, axes, mesh)
    text = "\n".join(str(w.message) for w in rec)
    assert "params['blocks'][0]['attn']['wq'] dimension 1 ('heads', size 2)" in text
    assert "mesh axis 'tensor' of size 8" in text
    assert "params['embed'] dimension 0 ('vocab', size 60)" in text
    assert sh["blocks"][0]["attn"]["wq"].spec == jax.sharding.PartitionSpec(None, None, None)
    # d_ff 176 divides by 8: split, and no warning for it
    assert "['mlp']" not in text
    assert sh["blocks"][0]["mlp"]["w_up"].spec == jax.sharding.PartitionSpec(None, "tensor")


@pytest.mark.slow
def test_300m_real_init_under_fsdp8():
    """A ~300M model (d_model 1024, 24 layers, 32k vocab) initialised for real with its AdamW
    state: ~3.6 GB in all, 1/8 per fake device."""
    cfg = T.TransformerConfig(vocab_size=32000, d_model=1024, num_layers=24, num_heads=16,
                              scan_layers=True)
    _, abstract, axes = T.abstract_init(cfg)
    assert 2.5e8 < T.count_params(abstract) < 3.6e8
    tx = optax.adamw(1e-3)
    state, _ = sharding.init_state_sharded(
        lambda p: {"params": p, "opt_state": tx.init(p)}, lambda: T.init_params(cfg, 0),
        axes, mesh8())
    check_every_array_sharded(state["params"], axes)
    check_every_array_sharded(state["opt_state"][0].mu, axes)


def test_activation_constraints_apply_only_while_a_sharded_step_is_traced():
    cfg = T.TransformerConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2)
    apply, params, _ = T.init(cfg, 0)
    toks = jnp.zeros((8, 8), jnp.int32)

    def constraints(fn):
        eqns = jax.make_jaxpr(fn)(params, toks).jaxpr.eqns
        return [e.params["sharding"].spec for e in eqns if e.primitive.name == "sharding_constraint"]

    assert constraints(apply) == []                      # no mesh: no-op
    mesh = sharding.make_mesh(2, 2, 2)

    def sharded(p, t):
        with activations.activation_sharding(mesh):
            return apply(p, t)

    specs = constraints(sharded)
    P = jax.sharding.PartitionSpec
    # embedding + 2 blocks x (q, k, v, attention out, mlp hidden, residual) + logits
    assert len(specs) == 1 + 2 * 6 + 1
    assert specs[0] == P(("data", "fsdp"), None, None)            # residual stream
    assert P(("data", "fsdp"), None, "tensor", None) in specs     # heads
    assert specs[-1] == P(("data", "fsdp"), None, "tensor")       # logits over vocab
    np.testing.assert_allclose(np.asarray(jax.jit(sharded)(params, toks)),
                               np.asarray(apply(params, toks)), rtol=1e-5, atol=1e-6)
