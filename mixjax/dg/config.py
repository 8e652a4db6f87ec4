"""Typed configuration of a DG sweep (``mixjax dg sweep CONFIG``).

A config file is a Python module with ``get_config() -> SweepConfig`` (the same
convention as ``mixjax.config``); overrides are dotted ``--set`` items parsed
by ``mixjax.config``'s parser, e.g.::

    mixjax dg sweep configs/dg_colored_mnist.py --set steps=300 \
        --set algorithms=[erm,irm] --set hparam_overrides.batch_size=32

Every error names the key before anything is built or compiled.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from mixjax.config import ConfigError, parse_value, run_config_file, set_value

TEST_ENV_MODES = ("single", "single+pairs")


@dataclasses.dataclass
class DatasetConfig:
    name: str = "colored_mnist"  # see mixjax.dg.datasets.DATASETS, or "tfds:<name>"
    seed: int = 0  # DomainBed: the dataset (colours, permutation) depends on the sweep seed
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ModelConfig:
    featurizer: str = "auto"  # auto | cnn | mlp | resnet (auto: DomainBed's choice by input shape)
    cnn_widths: tuple[int, ...] = (64, 128, 128, 128)  # DomainBed MNIST_CNN
    mlp_width: int = 256
    mlp_depth: int = 3
    resnet_widths: tuple[int, ...] = (16, 32, 64)
    resnet_blocks: int = 1


@dataclasses.dataclass
class SweepConfig:
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    algorithms: tuple[str, ...] = ("erm",)
    n_hparams: int = 20  # hparams seeds 0..n_hparams-1; seed 0 = defaults (DomainBed)
    n_trials: int = 3  # trial seeds 0..n_trials-1 (data split + hparam draw + init)
    test_envs: str = "single"  # "single+pairs" adds the pair runs that leave-one-domain-out needs
    steps: int = 5001  # DomainBed N_STEPS
    checkpoint_freq: int = 100  # DomainBed CHECKPOINT_FREQ for MNIST datasets
    holdout_fraction: float = 0.2
    hparam_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # fixed for every draw
    # train runs of one shape together in one vmapped step; None = auto (sweep.use_vmap): on for
    # GPU/TPU; on CPU only for MLP featurisers (benchmarks/bench_dg.py: vmapped convs are slower)
    vmap: bool | None = None
    max_group: int = 64  # most runs in one vmapped group
    eval_batch: int = 1024  # images per forward during evaluation
    output_dir: str = "runs/dg/sweep"


def validate(cfg: SweepConfig) -> SweepConfig:
    from mixjax.dg import algorithms, datasets

    def need(cond, key, msg):
        if not cond:
            raise ConfigError(f"config key {key!r}: {msg}")

    need(len(cfg.algorithms) > 0, "algorithms", "empty")
    for a in cfg.algorithms:
        need(a in algorithms.ALGORITHMS, "algorithms", f"unknown algorithm {a!r}; known {sorted(algorithms.ALGORITHMS)}")
    name = cfg.dataset.name
    need(name in datasets.DATASETS or name.startswith("tfds:"), "dataset.name", f"unknown dataset {name!r}")
    need(cfg.model.featurizer in ("auto", "cnn", "mlp", "resnet"), "model.featurizer", "auto|cnn|mlp|resnet")
    need(cfg.n_hparams >= 1, "n_hparams", "must be >= 1")
    need(cfg.n_trials >= 1, "n_trials", "must be >= 1")
    need(cfg.test_envs in TEST_ENV_MODES, "test_envs", f"one of {TEST_ENV_MODES}")
    need(cfg.steps >= 1, "steps", "must be >= 1")
    need(cfg.checkpoint_freq >= 1, "checkpoint_freq", "must be >= 1")
    need(0.0 < cfg.holdout_fraction < 1.0, "holdout_fraction", "must be in (0, 1)")
    need(cfg.max_group >= 1, "max_group", "must be >= 1")
    known = {k for a in cfg.algorithms for k in algorithms.get(a).hparam_space(True)}
    for k in cfg.hparam_overrides:
        need(k in known, f"hparam_overrides.{k}", f"no algorithm in the sweep has this hyperparameter; known {sorted(known)}")
    return cfg


def load(path: str | pathlib.Path, overrides: tuple[str, ...] | list[str] = ()) -> SweepConfig:
    cfg = run_config_file(path, SweepConfig)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        set_value(cfg, key.strip(), _parse(text.strip()))
    return validate(cfg)


def _parse(text: str):
    """``mixjax.config.parse_value``, plus bare-word lists: ``[erm,irm]`` or ``erm,irm``."""
    value = parse_value(text)
    if isinstance(value, str) and ("," in value or (value.startswith("[") and value.endswith("]"))):
        return [w.strip().strip("'\"") for w in value.strip("[]").split(",") if w.strip()]
    return value


def to_dict(cfg: SweepConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(**d["dataset"]),
        model=ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}),
        **{k: tuple(v) if k == "algorithms" else v for k, v in d.items() if k not in ("dataset", "model")},
    )


def to_json(cfg: SweepConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
