"""Deferred checkpoint saves (``Checkpointer(async_save=True, defer=True)``): the save call
returns after a device copy, orbax's save runs on a background thread; what is restored is
what was passed, even when the step donates (deletes) the saved buffers right after."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.train import checkpoint as ckpt_lib


def _state(k):
    return {"params": {"w": jnp.arange(6.0).reshape(2, 3) + k, "b": jnp.full((3,), k, jnp.bfloat16)},
            "step": jnp.int32(k), "host_leaf": np.arange(4) + k}


def test_deferred_save_survives_donation_and_restores_exactly(tmp_path):
    ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=2, async_save=True, defer=True)
    bump = jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)
    state, saved = _state(1), {}
    for step in (1, 2, 3):
        dev = {k: v for k, v in state.items() if k != "host_leaf"}
        saved[step] = jax.tree.map(np.array, state)   # copies: a view would block donation
        ck.save(step, state, {"step": step, "sampler": {"pos": step}},
                process={"sampler": {"pos": step}}, wait=False)
        assert ck._pending is not None            # the save call went to the worker
        dev = bump(dev)                           # deletes the buffers just saved
        assert state["params"]["w"].is_deleted()
        state = {**dev, "host_leaf": state["host_leaf"] + 1}
    assert ck.all_steps() == [2, 3]               # keep=2, after the pending call returned
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved[3])
    got, host, own = ck.restore_verified(3, target)
    assert host["step"] == 3 and host["checksum"] == ckpt_lib.host_checksum(host)
    assert own == {"sampler": {"pos": 3}}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(saved[3])):
        assert np.asarray(a).dtype == b.dtype and np.array_equal(np.asarray(a), b)
    ck.close()


def test_deferred_save_error_is_raised_by_the_next_call(tmp_path):
    ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", async_save=True, defer=True)

    def broken(*a, **k):
        raise OSError("disk full")
    ck.manager.save = broken
    ck.save(1, _state(1), {"step": 1, "sampler": {}}, wait=False)   # returns at once
    with pytest.raises(OSError, match="disk full"):
        ck.wait()
    ck.close()
