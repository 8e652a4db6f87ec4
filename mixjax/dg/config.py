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

from mixjax.config import ConfigError, check_types, parse_value, run_config_file, set_value

TEST_ENV_MODES = ("single", "single+pairs")
DATA_SEED_MODES = ("shared", "per_job")
# keys that only choose which jobs a sweep holds (a rerun may extend them) or how they are
# scheduled (never part of a job's arguments); every other key changes what a job computes
JOB_SET_KEYS = ("algorithms", "n_hparams", "n_trials", "test_envs")
SCHEDULE_KEYS = ("vmap", "max_group", "eval_batch", "output_dir", "data_workers")


@dataclasses.dataclass
class DatasetConfig:
    name: str = "colored_mnist"  # see mixjax.dg.datasets.DATASETS, or "tfds:<name>"
    seed: int = 0  # DomainBed: the dataset (colours, permutation) depends on the sweep seed
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # "shared": one realisation (built from ``seed``) for every job, for controlled comparisons;
    # "per_job": each job builds its own from its job seed, as DomainBed (its datasets draw from
    # the torch RNG seeded with ``args.seed``), so trial-to-trial standard errors include
    # data-realisation variance
    seeds: str = "shared"
    # label noise per environment (mixjax.dg.label_noise): one rate for every env, or
    # {env name: rate}; flips round(rate * n) labels of an env whenever it is a training env
    # (test envs keep clean labels); 0: none
    label_noise: float | dict[str, float] = 0.0
    # open-set DG (mixjax.dg.openset): the dataset's class ids held out as unknown; the other
    # classes are known (relabelled 0..K-1 by rank), training envs and the network see them only,
    # and each test env's unknown rows are scored (AUROC, OSCR). (): closed set
    open_set_unknown: tuple[int, ...] = ()


@dataclasses.dataclass
class ModelConfig:
    # auto | cnn | mlp | resnet (mixjax's small GroupNorm ResNet) | resnet18 | resnet50 (DomainBed's
    # torchvision ResNets, frozen BatchNorm, feature dropout); auto: DomainBed's choice by input shape
    featurizer: str = "auto"
    cnn_widths: tuple[int, ...] = (64, 128, 128, 128)  # DomainBed MNIST_CNN
    mlp_width: int = 256
    mlp_depth: int = 3
    resnet_widths: tuple[int, ...] = (16, 32, 64)
    resnet_blocks: int = 1
    # resnet18/resnet50: ImageNet weights, a torchvision state_dict saved to .safetensors or .npz
    # (docs/dg.md shows how); None: trained from scratch. Never downloaded.
    pretrained: str | None = None


def model_args(model: ModelConfig) -> dict:
    """The model's part of a job's arguments; keys added after a sweep format was fixed are left
    out while they hold their default, so earlier sweeps keep their job hashes."""
    out = dataclasses.asdict(model)
    if out["pretrained"] is None:
        del out["pretrained"]
    return out


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
    # image folders with augmentation: grain worker processes per job that read and augment the
    # training minibatches (0: in this process); the batches do not depend on it
    data_workers: int = 0
    # crafted-shift validation (mixjax.dg.crafted_val): shift families whose copies of every env
    # are evaluated at each record (env{i}_out_acc_shift_{family}); the "crafted" selection method
    crafted_val: tuple[str, ...] = ()
    output_dir: str = "runs/dg/sweep"


def validate(cfg: SweepConfig) -> SweepConfig:
    """Types first (``mixjax.config.check_types``: the engine behind ``Config``; a wrong type
    is an error naming the key), then the values."""
    from mixjax.dg import algorithms, datasets, hparams

    def need(cond, key, msg):
        if not cond:
            raise ConfigError(f"config key {key!r}: {msg}")

    check_types(cfg)

    need(len(cfg.algorithms) > 0, "algorithms", "empty")
    for a in cfg.algorithms:
        need(a in algorithms.ALGORITHMS, "algorithms", f"unknown algorithm {a!r}; known {sorted(algorithms.ALGORITHMS)}")
    name = cfg.dataset.name
    need(name in datasets.DATASETS or name.startswith("tfds:") or datasets.is_image_folder(name), "dataset.name",
         f"unknown dataset {name!r}")
    if datasets.is_image_folder(name):
        from mixjax.dg.image_folder import ImageFolderError, scan

        try:  # cheap: lists directories, decodes nothing
            scan(name, cfg.dataset.kwargs.get("root"))
        except ImageFolderError as e:
            raise ConfigError(f"config key 'dataset.kwargs.root' (--data-dir): {e}") from None
        need(isinstance(cfg.dataset.kwargs.get("augment", True), bool), "dataset.kwargs.augment",
             f"True or False (DomainBed's data_augmentation), got {cfg.dataset.kwargs.get('augment')!r}")
    from mixjax.dg.networks import DOMAINBED_RESNETS, FEATURIZERS

    need(cfg.model.featurizer in FEATURIZERS, "model.featurizer", "|".join(FEATURIZERS))
    need(not ("ccfp" in cfg.algorithms and cfg.model.featurizer not in ("auto", "cnn", "resnet")),
         "model.featurizer", "algorithm 'ccfp' perturbs the feature maps of mixjax's cnn or resnet "
         f"featuriser: use cnn, resnet or auto (image data), not {cfg.model.featurizer!r}")
    if cfg.model.pretrained is not None:
        need(cfg.model.featurizer in DOMAINBED_RESNETS, "model.pretrained",
             f"ImageNet weights need model.featurizer resnet18 or resnet50, not {cfg.model.featurizer!r}")
        _check_weights(cfg)
    need(cfg.data_workers >= 0, "data_workers", "must be >= 0")
    from mixjax.dg.crafted_val import FAMILIES

    for f in cfg.crafted_val:
        need(f in FAMILIES, "crafted_val", f"unknown shift family {f!r}; known {sorted(FAMILIES)}")
    need(not (cfg.crafted_val and datasets.is_image_folder(name)), "crafted_val",
         f"the shift families act on images in [0, 1]; dataset {name!r} is an image folder whose "
         "evaluation images are ImageNet-normalised")
    if cfg.dataset.open_set_unknown:   # class ids against the dataset's classes: at sweep start
        from mixjax.dg import openset

        need(min(cfg.dataset.open_set_unknown) >= 0, openset.KEY, "class ids must be >= 0")
        openset.check_algorithms(cfg.algorithms)
    need(cfg.dataset.seeds in DATA_SEED_MODES, "dataset.seeds", f"one of {DATA_SEED_MODES}")
    need(cfg.n_hparams >= 1, "n_hparams", "must be >= 1")
    need(cfg.n_trials >= 1, "n_trials", "must be >= 1")
    need(cfg.test_envs in TEST_ENV_MODES, "test_envs", f"one of {TEST_ENV_MODES}")
    need(cfg.steps >= 1, "steps", "must be >= 1")
    need(cfg.checkpoint_freq >= 1, "checkpoint_freq", "must be >= 1")
    need(0.0 < cfg.holdout_fraction < 1.0, "holdout_fraction", "must be in (0, 1)")
    need(cfg.max_group >= 1, "max_group", "must be >= 1")
    from mixjax.dg.hparams import network_space

    known = {k for a in cfg.algorithms for k in algorithms.get(a).hparam_space(True)} | set(network_space(cfg.model.featurizer))
    for k in cfg.hparam_overrides:
        need(k in known, f"hparam_overrides.{k}", f"no algorithm in the sweep has this hyperparameter; known {sorted(known)}")
        if k in hparams.CHOICES:
            need(cfg.hparam_overrides[k] in hparams.CHOICES[k], f"hparam_overrides.{k}", f"one of {hparams.CHOICES[k]}")
    return cfg


def _check_weights(cfg: SweepConfig) -> None:
    """Read the weights file and check every key and shape against the network (cheap next to
    training; the error names the file and the key)."""
    from flax import nnx

    from mixjax.models import tv_resnet_weights as W
    from mixjax.models.tv_resnet import TVResNet

    try:
        sd = W.read_file(cfg.model.pretrained)
        W.check(nnx.eval_shape(lambda: TVResNet(cfg.model.featurizer, 3, rngs=nnx.Rngs(0))), sd, cfg.model.pretrained)
    except W.WeightsError as e:
        raise ConfigError(f"config key 'model.pretrained': {e}") from None


def load(path: str | pathlib.Path, overrides: tuple[str, ...] | list[str] = (), data_dir: str | None = None) -> SweepConfig:
    """The config file's ``SweepConfig`` with ``--set`` overrides; ``data_dir`` (``--data-dir``)
    sets ``dataset.kwargs.root`` (image-folder datasets)."""
    cfg = run_config_file(path, SweepConfig)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        set_value(cfg, key.strip(), _parse(text.strip()))
    if data_dir is not None:
        cfg.dataset.kwargs = {**cfg.dataset.kwargs, "root": str(pathlib.Path(data_dir).expanduser().resolve())}
    return validate(cfg)


def _parse(text: str):
    """``mixjax.config.parse_value``, plus bare-word lists: ``[erm,irm]`` or ``erm,irm``."""
    value = parse_value(text)
    if isinstance(value, str) and ("," in value or (value.startswith("[") and value.endswith("]"))):
        return [w.strip().strip("'\"") for w in value.strip("[]").split(",") if w.strip()]
    return value


def to_dict(cfg: SweepConfig) -> dict:
    out = dataclasses.asdict(cfg)
    if not out["dataset"]["open_set_unknown"]:   # closed-set sweeps keep their config.json
        del out["dataset"]["open_set_unknown"]
    return out


def from_dict(d: dict) -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(**{k: tuple(v) if k == "open_set_unknown" else v for k, v in d["dataset"].items()}),
        model=ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}),
        **{k: tuple(v) if k in ("algorithms", "crafted_val") else v for k, v in d.items() if k not in ("dataset", "model")},
    )


def to_json(cfg: SweepConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("hparam_overrides", "kwargs", "label_noise"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def merge_into_existing(existing: dict, cfg: SweepConfig) -> tuple[SweepConfig, list[str]]:
    """The sweep a run directory holds after running ``cfg`` in it.

    A run directory holds one sweep: every key that changes what a job computes (steps,
    dataset, model, hparam_overrides, ...) must equal the one in its ``config.json``, else
    ``ConfigError`` names the key and both values (results made under other settings would be
    mixed into one table). The job-set keys may differ: the sweep is extended to the union
    (algorithms in order of first appearance, the larger ``n_hparams``/``n_trials``, pairs if
    either asked for them), so ``config.json`` always describes every job in the directory.
    Returns the merged config and one line per extension.
    """
    old = from_dict(existing)
    a, b = _flat(to_dict(old)), _flat(to_dict(cfg))
    for key in sorted(set(a) | set(b)):
        if key in JOB_SET_KEYS or key in SCHEDULE_KEYS:
            continue
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"config key {key!r}: this run directory holds a sweep made with {key}={a.get(key)!r}, "
                f"the command asks {key}={b.get(key)!r}; its results would be mixed with stale ones - "
                "use another --run-dir (or the same value)")
    merged = dataclasses.replace(
        cfg,
        algorithms=tuple(dict.fromkeys((*old.algorithms, *cfg.algorithms))),
        n_hparams=max(old.n_hparams, cfg.n_hparams),
        n_trials=max(old.n_trials, cfg.n_trials),
        test_envs="single+pairs" if "single+pairs" in (old.test_envs, cfg.test_envs) else "single",
    )
    notes = [f"{k}: {getattr(old, k)!r} -> {getattr(merged, k)!r}"
             for k in JOB_SET_KEYS if getattr(old, k) != getattr(merged, k)]
    return merged, notes
