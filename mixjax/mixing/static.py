"""Static mixtures: weights fixed for the whole run.

* ``uniform``:      w_i = 1 / K
* ``natural``:      w_i = n_i / sum_j n_j            (n_i: domain i's token count)
* ``temperature``:  w_i = n_i^(1/tau) / sum_j n_j^(1/tau)
  (tau = 1 is ``natural``, tau -> inf is ``uniform``; multilingual LMs such as
  XLM-R / mT5 use this sampling, e.g. Conneau et al. 2020, arXiv 1911.02116)
* ``manual``:       w given by domain name, renormalised; unnamed domains get 0.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, check_weight_vector, init_state, register


def _counts(name: str, token_counts: tuple[float, ...] | None, k: int) -> np.ndarray:
    if token_counts is None:
        raise ValueError(f"mixer {name!r} needs token_counts (per-domain token counts)")
    n = np.asarray(token_counts, np.float64)
    if n.shape != (k,):
        raise ValueError(f"mixer {name!r}: {len(n)} token counts for {k} domains")
    if np.any(n < 0) or not np.all(np.isfinite(n)) or n.sum() <= 0:
        raise ValueError(f"mixer {name!r}: token counts must be finite, >= 0, not all 0: {n}")
    return n


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Uniform(Mixer):
    name = "uniform"


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Temperature(Mixer):
    name = "temperature"
    tau: float = 2.0
    token_counts: tuple[float, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if not self.tau > 0:
            raise ValueError(f"mixer 'temperature': tau must be > 0, got {self.tau}")

    def init(self, num_domains: int):
        n = _counts(self.name, self.token_counts, num_domains)
        p = n / n.sum()
        w = np.where(p > 0, p, 0.0) ** (1.0 / self.tau)
        return init_state(jnp.asarray(w / w.sum(), jnp.float32))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Natural(Temperature):
    name = "natural"
    tau: float = 1.0


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Manual(Mixer):
    name = "manual"
    weights_by_domain: Mapping[str, float] | None = None
    domains: tuple[str, ...] | None = None

    def init(self, num_domains: int):
        if not isinstance(self.weights_by_domain, Mapping):
            raise ValueError(f"mixer 'manual': weights_by_domain must be a dict "
                             f"{{domain: weight}} of numbers, got "
                             f"{type(self.weights_by_domain).__name__} {self.weights_by_domain!r}"
                             " (a --set value must be a Python literal, e.g. "
                             "{'web': 0.7, 'code': 0.3})")
        if not self.weights_by_domain:
            raise ValueError("mixer 'manual' needs weights_by_domain={domain: weight}")
        odd = {d: x for d, x in self.weights_by_domain.items()
               if isinstance(x, bool) or not isinstance(x, (int, float, np.number))}
        if odd:
            raise ValueError(f"mixer 'manual': weights must be numbers, got {odd}")
        if self.domains is None or len(self.domains) != num_domains:
            raise ValueError(f"mixer 'manual' needs the {num_domains} domain names")
        unknown = sorted(set(self.weights_by_domain) - set(self.domains))
        if unknown:
            raise ValueError(f"mixer 'manual': unknown domain(s) {unknown}; "
                             f"known: {list(self.domains)}")
        raw = np.array([float(self.weights_by_domain.get(d, 0.0)) for d in self.domains])
        bad = [d for d, x in zip(self.domains, raw) if not np.isfinite(x) or x < 0]
        if bad or raw.sum() <= 0:
            raise ValueError(f"mixer 'manual': weights must be finite, >= 0 and not all 0 "
                             f"(check {bad or list(self.domains)})")
        w = check_weight_vector(raw / raw.sum(), self.domains, "mixer 'manual'")
        return init_state(jnp.asarray(w, jnp.float32))

    def __hash__(self):  # Mapping fields are unhashable; jit needs a hashable mixer.
        items = tuple(sorted((self.weights_by_domain or {}).items()))
        return hash((self.name, items, self.domains, self.apply_to_override))
