"""A DG algorithm as the tests build it: DomainBed's default hyperparameters (draw 0 of
``hparam_space(True)``), then overrides, split into static and traced (float32) parts; an
algorithm that reads the training envs' metadata gets one number per env (0, 15, 30, ...)."""

import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg.networks import NetSpec


def build_algorithm(name, net, *, num_envs, batch_size, **override):
    """``(algorithm, traced hyperparameters)`` for ``num_envs`` environments."""
    cls = A.get(name)
    hp = H.draw(cls.hparam_space(True), 0, 0)
    hp.update(batch_size=batch_size, **override)
    static, traced = H.split_static(hp)
    traced = {k: jnp.float32(v) for k, v in traced.items()}
    if cls.needs_train_env_metadata:   # what the group step passes: the training envs' metadata rows
        traced["train_env_meta"] = 15.0 * jnp.arange(num_envs, dtype=jnp.float32)[:, None]
    return cls(net=net, num_envs=num_envs, static=static), traced


# The parity tests' tiny case: an MLP on 5 features, 3 classes, 2 environments of 4 rows.
TINY_NET = NetSpec(input_shape=(5,), num_classes=3, featurizer="mlp", mlp_width=8)


def build_tiny(name, **override):
    """``build_algorithm`` on ``TINY_NET`` with 2 environments and batch size 4."""
    return build_algorithm(name, TINY_NET, num_envs=2, batch_size=4, **override)


def tiny_batches(seed=0):
    """``(xs [2, 4, 5], ys [2, 4])``: one minibatch per environment of the tiny case."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32),
            jnp.asarray([[0, 1, 1, 2], [1, 0, 1, 1]], jnp.int32))
