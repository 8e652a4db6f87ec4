"""Hyperparameter defaults and random search, following DomainBed's registry.

facebookresearch/DomainBed ``domainbed/hparams_registry.py``: ``hparams_seed 0``
gives the defaults; otherwise each hyperparameter is drawn from its own
``np.random.RandomState(seed_hash(seed, name))`` with
``seed = seed_hash(hparams_seed, trial_seed)``, so adding a hyperparameter
does not shift the others. Using the same hash and the same draw calls, the
values for shared names match DomainBed's for the same seeds.

``STATIC`` hyperparameters fix array shapes (batch size, MLP widths): runs can
be vmapped together only if they agree on them. All others are passed into
the compiled step as f32 scalars, so runs that differ only in them share one
compiled, vmapped step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Mapping

import numpy as np

# datasets whose hyperparameter ranges follow DomainBed's "small images" branch
SMALL_DATASETS = ("colored_mnist", "rotated_mnist", "digits_style", "synthetic")
STATIC = frozenset({"batch_size", "mlp_width", "mlp_depth", "n_meta_test", "urm_discriminator_hidden_layers",
                    "queue_size", "knn_k", "mode_steps", "mode_num_mix", "mmld_domains",
                    "modify_bank", "metacausal_levels"})
# string-valued hyperparameters (DomainBed's URM): static, and a step sees the index of the value
CHOICES = {
    "urm": ("adversarial",),
    "urm_discriminator_optimizer": ("adam", "sgd"),
    "urm_generator_output": ("tanh", "relu", "sigmoid"),
}


def seed_hash(*args: Any) -> int:
    """DomainBed's ``misc.seed_hash``: md5 of ``str(args)`` mod 2**31."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


@dataclasses.dataclass(frozen=True)
class HParam:
    default: Any
    sample: Callable[[np.random.RandomState], Any]


def common_space(small: bool) -> dict[str, HParam]:
    """lr, weight_decay, batch_size (DomainBed's values for small / big datasets)."""
    if small:
        return {
            "lr": HParam(1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5)),
            "weight_decay": HParam(0.0, lambda r: 0.0),
            "batch_size": HParam(64, lambda r: int(2 ** r.uniform(3, 9))),
        }
    return {
        "lr": HParam(5e-5, lambda r: 10 ** r.uniform(-5, -3.5)),
        "weight_decay": HParam(0.0, lambda r: 10 ** r.uniform(-6, -2)),
        "batch_size": HParam(32, lambda r: int(2 ** r.uniform(3, 5.5))),
    }


def network_space(featurizer: str) -> dict[str, HParam]:
    """The network's own hyperparameters (DomainBed ``hparams_registry.py``, unconditional
    block): ``resnet_dropout`` 0, random choice of {0, 0.1, 0.5}, for its ResNet featurisers."""
    if featurizer in ("resnet18", "resnet50"):
        return {"resnet_dropout": HParam(0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))}
    return {}


def is_small(dataset: str) -> bool:
    return dataset in SMALL_DATASETS


def draw(space: Mapping[str, HParam], hparams_seed: int, trial_seed: int) -> dict[str, Any]:
    """Defaults when ``hparams_seed == 0``, else DomainBed's per-name random draws."""
    if hparams_seed == 0:
        return {k: v.default for k, v in space.items()}
    seed = seed_hash(hparams_seed, trial_seed)
    return {k: v.sample(np.random.RandomState(seed_hash(seed, k))) for k, v in space.items()}


def split_static(hp: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], dict[str, float]]:
    """(sorted static items, {name: float} traced values); a ``CHOICES`` value becomes its index."""
    static = tuple(sorted((k, choice_index(k, v) if k in CHOICES else int(v))
                          for k, v in hp.items() if k in STATIC or k in CHOICES))
    traced = {k: float(v) for k, v in hp.items() if k not in STATIC and k not in CHOICES}
    return static, traced


def choice_index(name: str, value: Any) -> int:
    if value not in CHOICES[name]:
        raise ValueError(f"hyperparameter {name}={value!r}: must be one of {CHOICES[name]}")
    return CHOICES[name].index(value)
