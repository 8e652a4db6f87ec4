"""Objective names, hyperparameters and their checks: what config validation needs.

``mixjax.config`` validates ``train.objective`` / ``train.objective_hparams``
against this table before anything is built. It imports nothing from mixjax, so
the configuration layer never imports the train package (no import circle
``config -> train.objectives -> ... -> config``; ``tests/test_import_graph.py``).
The step factories themselves are attached by ``mixjax.train.objectives``
(``register(name, factory, hparams=..., check=...)``), which writes here too, so
an objective registered by a fork's own module is validated the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Spec:
    hparams: Mapping[str, Any]                                   # name -> default
    check: Callable[[Mapping[str, Any]], None] | None = None     # raises ValueError/TypeError


_SPECS: dict[str, Spec] = {}


def declare(name: str, *, hparams: Mapping[str, Any] = (),
            check: Callable[[Mapping[str, Any]], None] | None = None) -> None:
    """Declares (or re-declares) an objective's hyperparameters and their check."""
    _SPECS[name] = Spec(dict(hparams), check)


def names() -> list[str]:
    return sorted(_SPECS)


def hparam_names(name: str) -> list[str]:
    return sorted(_SPECS[name].hparams)


def resolved_hparams(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    return {**_SPECS[name].hparams, **given}


def check_hparams(name: str, given: Mapping[str, Any]) -> None:
    spec = _SPECS[name]
    if spec.check is not None:
        spec.check(resolved_hparams(name, given))


# -- the built-in objectives (factories in mixjax.train.objectives) -------------------------
BILEVEL_HPARAMS = {"penalty": 10.0, "lr_p": 1e-2, "lower_lr": None}


def check_bilevel(hp) -> None:
    if not hp["penalty"] > 0:
        raise ValueError(f"bilevel penalty must be > 0, got {hp['penalty']}")
    if not hp["lr_p"] > 0:
        raise ValueError(f"bilevel lr_p must be > 0, got {hp['lr_p']}")
    if hp["lower_lr"] is not None and not hp["lower_lr"] > 0:
        raise ValueError(f"bilevel lower_lr must be > 0 or None, got {hp['lower_lr']}")


FISH_HPARAMS = {"meta_lr": 0.5, "divide_by_meta_steps": False}


def check_fish(hp) -> None:
    if not hp["meta_lr"] > 0:
        raise ValueError(f"fish meta_lr must be > 0, got {hp['meta_lr']}")
    if not isinstance(hp["divide_by_meta_steps"], bool):
        raise ValueError("fish divide_by_meta_steps must be True or False, got "
                         f"{hp['divide_by_meta_steps']!r}")


declare("mixer")
declare("bilevel", hparams=BILEVEL_HPARAMS, check=check_bilevel)
declare("fish", hparams=FISH_HPARAMS, check=check_fish)
