"""Expert parallelism (the ``expert`` mesh axis): the MoE model's loss and gradients on
8 fake CPU devices (conftest) with expert=4 x data=2 equal one device's, expert weights
are split over ``expert``, and a mesh.expert that does not divide the experts is a config
error naming the key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.config import Config, ConfigError
from mixjax.core import step as step_lib
from mixjax.models import moe
from mixjax.parallel import activations, sharding

CFG = moe.MoEConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, d_ff=16,
                    num_experts=4, top_k=2, capacity_factor=1.0, moe_every=1)


def _loss_and_grad(apply):
    def f(params, tokens):
        def loss(p):
            tl, tm = step_lib.token_losses(apply, p, tokens, 0)
            return jnp.sum(tl) / jnp.sum(tm)
        return jax.value_and_grad(loss)(params)
    return f


def test_expert4_data2_equals_one_device():
    apply, params, axes = moe.init(CFG, 0)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (8, 9), 0, 32)
    f = _loss_and_grad(apply)
    one_loss, one_grad = jax.jit(f)(params, tokens)

    mesh = sharding.make_mesh(data=2, expert=4)
    assert dict(mesh.shape) == {"data": 2, "expert": 4, "fsdp": 1, "tensor": 1}
    psh = sharding.shape_aware_param_shardings(params, axes, mesh)
    w_up = psh["blocks"][0]["moe"]["w_up"]
    assert w_up.spec == P("expert", None, None)
    placed = sharding.place(params, psh)
    assert placed["blocks"][0]["moe"]["w_up"].addressable_shards[0].data.shape == (1, 16, 16)
    batch = jax.device_put(tokens, sharding.batch_sharding(mesh))
    assert sharding.batch_axes(mesh) == ("data", "expert", "fsdp")

    def traced(p, t):
        with activations.activation_sharding(mesh):
            return f(p, t)

    rep = NamedSharding(mesh, P())
    many_loss, many_grad = jax.jit(traced, in_shardings=(psh, batch.sharding),
                                   out_shardings=(rep, psh))(placed, batch)
    np.testing.assert_allclose(float(many_loss), float(one_loss), rtol=1e-5, atol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one_grad),
                            jax.tree.leaves(many_grad)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_mesh_sizes_with_expert_axis():
    assert sharding.resolve_mesh_sizes(expert=4, data=-1, num_devices=8) == {
        "data": 2, "expert": 4, "fsdp": 1, "tensor": 1}
    assert sharding.resolve_mesh_shape(2, 2, 2, num_devices=8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.resolve_mesh_sizes(expert=4, data=4, num_devices=8)


@pytest.mark.parametrize("expert,experts,ok", [(3, 4, False), (4, 8, True), (8, 4, False),
                                               (2, None, True)])
def test_expert_axis_must_divide_the_experts(expert, experts, ok):
    from mixjax.train import checks
    cfg = Config()
    cfg.model.kind = "moe"
    cfg.model.hparams = {} if experts is None else {"num_experts": experts}
    cfg.mesh.expert = expert
    if ok:
        checks._check_model_kind(cfg)
        return
    with pytest.raises(ConfigError, match=rf"mesh\.expert.*mesh\.expert={expert} does not "
                                          rf"divide model\.hparams\.num_experts={experts}"):
        checks._check_model_kind(cfg)
