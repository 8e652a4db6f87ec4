"""Sample-level loss reweighting: per-sequence weights from per-sequence losses.

Sow, Woisetschläger, Liang, Jacobsen, Wang (ICLR 2025, arXiv 2502.06733),
"Dynamic Loss-Based Sample Reweighting for Improved Large Language Model
Pretraining"; reference code ``sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025:
src/trainer.py`` (``scale_losses``), commit edd6f15.

Given the (all-gathered) mean token losses l_i of the B sequences of a batch::

    h_i = (2 l_i - l_max - l_min) / (l_max - l_min)      in [-1, 1] (0 if all equal)
    f_i = shape(h_i):   linupper   min(h + 1, 1)
                        quadratic  1 - h^2
                        extremes   |h|
                        upper      0.5 h + 0.5
    w_i = B * softmax((f - max f) / r)_i                 (mean 1)

The trainer multiplies sequence i's loss by w_i (the reference's
``w_i * (len_i / sum len) * l_i * W * B_local`` on the token-mean loss), so
the weights compose with any domain mixer. During the first ``burn_in``
steps every weight is 1. Defaults are the reference's: temperature r = 1,
burn-in 1000 steps; the shipped runs use ``quadratic``.

Sequences whose loss is not finite, or that ``valid`` excludes (no counted
tokens), keep weight 1 and are left out of l_min / l_max and of the softmax,
so the weights stay finite and keep mean 1 over the batch.

Usage (the train step, when config ``mixing.sample_reweight`` names a shape)::

    rw = sample_reweight.get("quadratic", temperature=1.0, burn_in=1000)
    w = rw.sample_weights(sample_loss, step)            # f32[B], mean 1

A fork adds a shape with ``@register_shape("name")`` on a function
``h -> f`` (jnp, elementwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

_SHAPES: dict[str, Callable[[Array], Array]] = {}


def register_shape(name: str):
    """Decorator: makes an elementwise shaping function available as ``get(name)``."""
    def deco(fn):
        if name in _SHAPES and _SHAPES[name] is not fn:
            raise ValueError(f"sample-reweighting shape {name!r} is registered twice")
        _SHAPES[name] = fn
        return fn
    return deco


@register_shape("linupper")
def linupper(h):
    return jnp.minimum(h + 1.0, 1.0)


@register_shape("quadratic")
def quadratic(h):
    return 1.0 - h * h


@register_shape("extremes")
def extremes(h):
    return jnp.abs(h)


@register_shape("upper")
def upper(h):
    return 0.5 * h + 0.5


def names() -> list[str]:
    return sorted(_SHAPES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleReweighter:
    """Per-sequence loss weights; hashable, so it can be a static jit argument."""

    shape: str = "quadratic"
    temperature: float = 1.0
    burn_in: int = 1000

    def __post_init__(self):
        if self.shape not in _SHAPES:
            raise KeyError(f"unknown sample-reweighting shape {self.shape!r}; "
                           f"known: {', '.join(names())}")
        if not self.temperature > 0:
            raise ValueError(f"sample reweighting: temperature must be > 0, "
                             f"got {self.temperature}")
        if self.burn_in < 0:
            raise ValueError(f"sample reweighting: burn_in must be >= 0, got {self.burn_in}")

    def sample_weights(self, sample_loss: Array, step: Any, valid: Array | None = None) -> Array:
        """f32[B] weights with mean 1 (all 1 during the burn-in)."""
        loss = jnp.asarray(sample_loss, jnp.float32)
        ok = jnp.isfinite(loss)
        if valid is not None:
            ok = ok & valid.astype(bool)
        # Scale by the largest magnitude first so l_max - l_min cannot overflow.
        scale = jnp.max(jnp.where(ok, jnp.abs(loss), 0.0))
        scale = jnp.where(scale > 0, scale, 1.0)
        x = jnp.where(ok, loss / scale, 0.0)
        hi = jnp.max(jnp.where(ok, x, -jnp.inf))
        lo = jnp.min(jnp.where(ok, x, jnp.inf))
        spread = hi - lo
        h = jnp.where(spread > 0, (2.0 * x - hi - lo) / jnp.where(spread > 0, spread, 1.0), 0.0)
        f = _SHAPES[self.shape](jnp.clip(h, -1.0, 1.0))
        logits = jnp.where(ok, (f - jnp.max(jnp.where(ok, f, -jnp.inf))) / self.temperature,
                           -jnp.inf)
        n_ok = jnp.sum(ok)
        soft = jax.nn.softmax(jnp.where(n_ok > 0, logits, 0.0))
        w = jnp.where(ok, n_ok * soft, 1.0)
        return jnp.where(jnp.asarray(step) < self.burn_in, jnp.ones_like(w), w)

    __call__ = sample_weights


def get(shape: str, **hparams: Any) -> SampleReweighter:
    """Builds a reweighter; an unknown hyperparameter is a clear error."""
    known = [f.name for f in dataclasses.fields(SampleReweighter) if f.name != "shape"]
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(f"sample reweighting has no hyperparameter(s) {unknown}; known: {known}")
    return SampleReweighter(shape=shape, **hparams)


def sample_weights(sample_loss: Array, step: Any, *, shape: str = "quadratic",
                   temperature: float = 1.0, burn_in: int = 1000,
                   valid: Array | None = None) -> Array:
    """Functional form of :meth:`SampleReweighter.sample_weights`."""
    return get(shape, temperature=temperature, burn_in=burn_in).sample_weights(
        sample_loss, step, valid)
