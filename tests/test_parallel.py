"""Mesh from config, shape-aware logical rules, state placement and batch assembly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.parallel import distributed
from mixjax.parallel import sharding, step_sharding


@pytest.mark.parametrize("sizes, n, want", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 1), 8, (2, 4, 1)),
    ((2, 1, -1), 8, (2, 1, 4)),
    ((1, 1, 1), 8, (1, 1, 1)),       # smaller than the device count: first device only
    ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_resolve_mesh_shape(sizes, n, want):
    assert sharding.resolve_mesh_shape(*sizes, num_devices=n) == want


@pytest.mark.parametrize("sizes, n, message", [
    ((-1, -1, 1), 8, "at most one mesh axis may be -1"),
    ((3, -1, 1), 8, "not divisible by the product 3"),
    ((4, 4, 1), 8, "needs 16 devices; 8 available"),
    ((0, 1, 1), 8, "positive integers or -1"),
])
def test_resolve_mesh_shape_errors(sizes, n, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_mesh_shape(*sizes, num_devices=n)


def test_mesh_from_config_uses_auto_axes_and_all_devices():
    @dataclasses.dataclass
    class MeshCfg:
        data: int = -1
        fsdp: int = 2
        tensor: int = 1

    mesh = sharding.mesh_from_config(MeshCfg())
    assert dict(mesh.shape) == {"data": 4, "expert": 1, "fsdp": 2, "tensor": 1}
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
    assert mesh.devices.size == 8


def test_spec_for_shape_drops_axes_that_do_not_divide_or_repeat():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.spec_for_shape(("embed", "mlp"), (16, 32), mesh) == P("fsdp", "tensor")
    # 5 heads do not split over tensor=2: that dimension is replicated.
    assert sharding.spec_for_shape(("embed", "heads", "head_dim"), (16, 5, 4), mesh) == \
        P("fsdp", None, None)
    # vocab and mlp both map to tensor; the second use is dropped.
    assert sharding.spec_for_shape(("vocab", "mlp"), (32, 32), mesh) == P("tensor", None)
    one = sharding.make_mesh(1, 1, 1)
    assert sharding.spec_for_shape(("vocab", "embed"), (32, 16), one) == P(None, None)
    with pytest.raises(KeyError, match="no sharding rule for logical axis 'bogus'"):
        sharding.spec_for_shape(("bogus",), (4,), mesh)


def test_train_state_shardings_mirror_params_in_the_optimizer_state():
    mesh = sharding.make_mesh(2, 2, 2)
    params = {"w": jnp.ones((16, 32)), "scale": jnp.ones((16,))}
    axes = {"w": ("embed", "mlp"), "scale": ("norm",)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "mix_state": {"weights": jnp.ones(4) / 4}}
    sh = sharding.train_state_shardings(state, axes, mesh)
    assert sh["params"]["w"].spec == P("fsdp", "tensor")
    adam = sh["opt_state"][1][0]
    assert adam.mu["w"].spec == P("fsdp", "tensor") and adam.nu["w"].spec == P("fsdp", "tensor")
    assert adam.count.spec == P()
    assert sh["mix_state"]["weights"].spec == P() and sh["step"].spec == P()
    placed = sharding.place(state, sh)
    assert placed["opt_state"][1][0].mu["w"].sharding == sh["params"]["w"]
    # place copies: no two leaves share a buffer (the step donates its state)
    ptrs = [x.addressable_shards[0].data.unsafe_buffer_pointer() for x in jax.tree.leaves(placed)]
    assert len(ptrs) == len(set(ptrs))


def test_shard_batch_splits_rows_and_replicates_per_domain_values():
    mesh = sharding.make_mesh(2, 2, 2)
    batch = {"tokens": np.arange(16 * 5, dtype=np.int32).reshape(16, 5),
             "domain_id": np.arange(16, dtype=np.int32) % 4,
             "sampling_weights": np.full(4, 0.25, np.float32)}
    out = step_sharding.shard_batch(batch, mesh)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    assert out["sampling_weights"].sharding.spec == P()
    assert out["tokens"].addressable_shards[0].data.shape == (4, 5)   # 16 rows / (2*2)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
    with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4 batch"):
        step_sharding.shard_batch({"domain_id": np.zeros(6, np.int32)}, mesh)


def test_process_rows_single_process_owns_the_whole_batch():
    mesh = sharding.make_mesh(8, 1, 1)
    assert distributed.process_rows(NamedSharding(mesh, P(("data", "fsdp"))), 16) == (0, 16)


def test_global_batch_checks_the_local_row_count():
    mesh = sharding.make_mesh(8, 1, 1)
    with pytest.raises(ValueError, match=r"batch\['tokens'\] has 8 rows on process 0, expected "
                                         r"rows \[0, 16\)"):
        distributed.global_batch({"tokens": np.zeros((8, 3))}, mesh, ("data", "fsdp"), 16)


def test_initialize_is_a_no_op_without_a_request(monkeypatch):
    for var in ("MIXJAX_DISTRIBUTED", "MIXJAX_COORDINATOR", "MIXJAX_NUM_PROCESSES",
                "MIXJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False
    monkeypatch.setenv("MIXJAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="MIXJAX_NUM_PROCESSES must be an integer, got 'two'"):
        distributed.initialize()
