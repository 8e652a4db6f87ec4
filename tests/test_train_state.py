"""The typed train state: checkpoint layout compatibility and per-field shardings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mixjax import mixing
from mixjax.parallel import sharding
from mixjax.train import checkpoint as ckpt_lib
from mixjax.core import state as state_lib

PARAMS = {"w": jnp.arange(16 * 32, dtype=jnp.float32).reshape(16, 32) / 100.0,
          "scale": jnp.ones((16,))}
AXES = {"w": ("embed", "mlp"), "scale": ("norm",)}


def _state(extra=None):
    tx = optax.adamw(1e-3)
    s = state_lib.init_state(PARAMS, tx, mixing.get("uniform"), 3, seed=0)
    return s.replace(extra=extra or {}) if extra is not None else s


def test_a_checkpoint_of_the_untyped_dict_layout_restores_into_the_typed_state(tmp_path):
    """Checkpoints written before the state was typed held the flat dict: same layout."""
    state = _state(extra={"lower_params": jax.tree.map(lambda x: x + 1.0, PARAMS)})
    old_layout = {"params": state.params, "opt_state": state.opt_state,
                  "mix_state": state.mix_state, "step": jnp.asarray(5, jnp.int32),
                  "rng": state.rng, "eval_loss": jnp.asarray([1.0, 2.0, 3.0]),
                  "lower_params": state.extra["lower_params"]}
    ck = ckpt_lib.Checkpointer(tmp_path / "ckpt")
    ck.save(5, old_layout, {"step": 5, "sampler": {}, "last_weights": [1 / 3] * 3})
    abstract = jax.tree.map(ckpt_lib._abstract, state)
    got, host, _ = ck.restore_verified(5, abstract)
    ck.close()
    assert isinstance(got, state_lib.TrainState) and host["step"] == 5
    assert int(got.step) == 5
    np.testing.assert_array_equal(np.asarray(got.eval_loss), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(got.extra["lower_params"]["w"]),
                                  np.asarray(PARAMS["w"]) + 1.0)
    assert got.to_tree().keys() == old_layout.keys()


def test_extra_keys_must_not_clash_with_fields():
    with pytest.raises(ValueError, match="clash"):
        _state(extra={"params": PARAMS}).to_tree()


def test_shardings_are_decided_per_field():
    mesh = sharding.make_mesh(1, 2, 4)   # 8 fake CPU devices (conftest)
    state = _state(extra={"lower_params": PARAMS, "counter": jnp.zeros((), jnp.int32)})
    sh = sharding.train_state_shardings(state, AXES, mesh)
    assert isinstance(sh, state_lib.TrainState)
    w_spec = sh.params["w"].spec
    assert w_spec == P("fsdp", "tensor")
    assert sh.extra["lower_params"]["w"].spec == w_spec          # params-shaped: like params
    assert sh.opt_state[0].mu["w"].spec == w_spec
    assert sh.extra["counter"].spec == P() and sh.step.spec == P()
    assert sh.mix_state["weights"].spec == P() and sh.eval_loss.spec == P()
