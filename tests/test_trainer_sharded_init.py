"""The Trainer builds its state sharded from the start (8 fake CPU devices, ``fsdp=8``).

The parameters are created inside the one jitted, ``out_shardings`` init of the train
state (``parallel.init_state_sharded`` with a params *function*): the eager
single-device init is never called, every weight matrix and its AdamW moments hold
1/8 of their bytes per device, and the values equal the eager init bit for bit.
"""

import jax
import numpy as np
import pytest

from mixjax.models import transformer
from mixjax.train import loop
from train_fakes import fake_data, tiny_config

FSDP = 8


def _per_device_bytes(x):
    return {s.data.nbytes for s in x.addressable_shards}


def test_trainer_init_is_born_sharded_and_equals_the_eager_init(tmp_path, monkeypatch):
    assert jax.device_count() >= FSDP, "tests/conftest.py sets 8 fake CPU devices"
    cfg = tiny_config(tmp_path / "run")
    cfg.data.batch_size = FSDP
    cfg.model.d_model, cfg.model.num_heads = 64, 4
    cfg.mesh.fsdp = FSDP
    eager = transformer.init(loop.model_config(cfg, 32), cfg.train.seed)[1]

    def no_eager_init(*a, **k):
        raise AssertionError("the Trainer initialised the model eagerly on one device")
    monkeypatch.setattr(transformer, "init", no_eager_init)
    trainer = loop.Trainer(cfg, fake_data(cfg))
    state = trainer.initial_state

    axes = jax.tree.leaves(trainer.logical_axes, is_leaf=lambda a: isinstance(a, tuple))
    sharded = 0
    for (path, x), names in zip(jax.tree_util.tree_leaves_with_path(state.params), axes):
        key = jax.tree_util.keystr(path)
        split = "embed" in names and x.shape[names.index("embed")] % FSDP == 0
        want = x.nbytes // FSDP if split else x.nbytes
        assert _per_device_bytes(x) == {want}, (key, _per_device_bytes(x), want)
        sharded += split
    assert sharded >= 9          # embedding + every attention/MLP matrix of both blocks
    # AdamW moments mirror the parameters' layout (every matrix split 8 ways)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim >= 2]
    assert len(moments) == 2 * sum(x.ndim >= 2 for x in jax.tree.leaves(state.params))
    for x in moments:
        assert _per_device_bytes(x) == {x.nbytes // FSDP}, (x.shape, _per_device_bytes(x))
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
    assert per_device < 0.2 * total, (per_device, total)
    # bit for bit the eager single-device initialisation
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eager),
                            jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))


def test_loaded_host_weights_are_placed_shard_by_shard():
    """Pretrained weights (``model.init_from``: host numpy arrays) reach each device as
    its own shard only; the state equals the one built from the same values on device."""
    from mixjax.parallel import sharding
    from mixjax.core import state as state_lib
    import optax

    cfg = tiny_config("unused")
    cfg.model.d_model, cfg.model.num_heads = 64, 4
    model_cfg = loop.model_config(cfg, 32)
    _, params, axes = transformer.init(model_cfg, 0)
    mesh = sharding.make_mesh(fsdp=FSDP)
    served = []

    class Recorded(np.ndarray):      # records the shape of every slice handed to a device
        def __getitem__(self, index):
            out = np.asarray(super().__getitem__(index))
            served.append((self.shape, out.shape))
            return out

    host = jax.tree.map(lambda x: np.asarray(x).view(Recorded), params)
    tx = optax.adamw(1e-3)
    init_fn = lambda p: state_lib.new_state(p, tx.init(p), {}, 3, 0)   # noqa: E731
    state, _ = sharding.init_state_sharded(init_fn, host, axes, mesh)
    split = [(whole, part) for whole, part in served if whole != part]
    # every matrix split 8 ways (each served once per device), never whole
    assert len(split) >= 9 * FSDP
    assert all(np.prod(part) * FSDP == np.prod(whole) for whole, part in split)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
