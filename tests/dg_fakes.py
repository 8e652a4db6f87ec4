"""A DG algorithm as the tests build it: DomainBed's default hyperparameters (draw 0 of
``hparam_space(True)``), then overrides, split into static and traced (float32) parts; an
algorithm that reads the training envs' metadata gets one number per env (0, 15, 30, ...)."""

import jax.numpy as jnp

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H


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
