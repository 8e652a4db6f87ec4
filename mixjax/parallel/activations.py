"""Activation sharding constraints by logical name (MaxText-style).

Models name their activations' axes (``constrain(x, ("batch", "seq", "act_embed"))``);
while :func:`activation_sharding` is active -- around the tracing of a sharded step,
see :func:`mixjax.parallel.step_sharding.jit_sharded_step` -- those names become
``with_sharding_constraint`` under ``ACTIVATION_RULES``; otherwise (one device, eager
use, tests) ``constrain`` is the identity.
"""

from __future__ import annotations

import contextlib
import threading

import jax
from jax.sharding import NamedSharding

from mixjax.parallel.sharding import ACTIVATION_RULES, spec_for_shape

_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh, rules=ACTIVATION_RULES):
    """While active (on this thread), :func:`constrain` places activations on ``mesh``.

    Enter it around the *tracing* of a step (``jit_sharded_step`` does): the
    constraints are recorded in the jaxpr, so the compiled step keeps them.
    """
    previous = getattr(_ACTIVE, "ctx", None)
    _ACTIVE.ctx = (mesh, rules)
    try:
        yield
    finally:
        _ACTIVE.ctx = previous


def constrain(x, names: tuple[str | None, ...]):
    """``x`` with the sharding its logical activation ``names`` give under the active
    :func:`activation_sharding`; ``x`` unchanged when none is active (one device, eager
    use, tests). A mesh axis that does not divide a dimension is dropped for it (e.g. the
    B/K rows of one domain inside the gradient engine's vmap): activations are transient,
    so this is not warned about, unlike parameters."""
    ctx = getattr(_ACTIVE, "ctx", None)
    if ctx is None:
        return x
    mesh, rules = ctx
    if x.ndim != len(names):
        raise ValueError(f"constrain: activation of shape {x.shape} got logical names {names}")
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, spec_for_shape(tuple(names), x.shape, mesh, rules)))
