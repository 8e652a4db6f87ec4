"""Whether a function is being traced for forward-mode autodiff (``jax.jvp``/``jax.linearize``).

Fused attention kernels (cuDNN flash attention, the Pallas splash kernel) are
``jax.custom_vjp`` functions: they have a backward rule and no forward-mode one, so
``jax.jvp`` through them fails. Code that traces a model under forward mode (the
gradient engine's ``jvp`` strategy, ``mixjax.mixing.grads``) does it inside
:func:`tracing`; the model then picks a kernel that forward mode can differentiate
(``mixjax.models.transformer.resolve_attention`` -> ``xla``). Tracing is synchronous and
per thread, so a thread-local flag set around the ``jax.jvp`` call is seen by exactly
the functions it traces.
"""

from __future__ import annotations

import contextlib
import threading

_STATE = threading.local()


@contextlib.contextmanager
def tracing():
    """While active (this thread), :func:`active` is True."""
    previous = getattr(_STATE, "on", False)
    _STATE.on = True
    try:
        yield
    finally:
        _STATE.on = previous


def active() -> bool:
    return getattr(_STATE, "on", False)
