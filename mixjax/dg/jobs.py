"""A sweep's jobs (DomainBed's protocol), their seeds, splits and groups of one shape."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Iterable

import numpy as np

from mixjax import run_identity
from mixjax.dg import algorithms as A
from mixjax.dg import datasets as D
from mixjax.dg import hparams as H
from mixjax.dg.config import SweepConfig, model_args
from mixjax.dg.networks import NetSpec

# threefry (JAX's default) keys: a job's random stream is the same whether it runs alone or
# vmapped in a group ("rbg" compiles ~3x faster on CPU but its streams change under vmap).
RNG_IMPL = "threefry2x32"


@dataclasses.dataclass(frozen=True)
class Job:
    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    hparams: tuple[tuple[str, Any], ...]

    @property
    def seed(self) -> int:
        return H.seed_hash(self.dataset, self.algorithm, list(self.test_envs), self.hparams_seed, self.trial_seed)

    @property
    def id(self) -> str:
        envs = "-".join(map(str, self.test_envs))
        return f"{self.dataset}/{self.algorithm}/te{envs}/h{self.hparams_seed}/t{self.trial_seed}"

    def data_seed(self, cfg: SweepConfig) -> int:
        """The seed of this job's data realisation: the job seed ("per_job", DomainBed) or the config's."""
        return self.seed if cfg.dataset.seeds == "per_job" else cfg.dataset.seed

    def args(self, cfg: SweepConfig) -> dict:
        """DomainBed's ``vars(args)`` of ``scripts/train.py`` for this job, without ``output_dir``.

        ``hparams`` is, as in DomainBed, the JSON of the explicit overrides (or None); the
        resolved hyperparameters are the record's top-level ``hparams``. ``mixjax`` holds what
        DomainBed fixes in code (dataset construction, network), so the md5 of this dict
        names everything a job's numbers depend on.
        """
        out = {
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "test_envs": list(self.test_envs),
            "hparams_seed": self.hparams_seed,
            "trial_seed": self.trial_seed,
            "seed": self.seed,
        }
        overrides = {k: v for k, v in cfg.hparam_overrides.items() if k in dict(self.hparams)}
        out.update({
            "data_dir": cfg.dataset.kwargs.get("root"),
            "task": "domain_generalization",
            "hparams": json.dumps(overrides, sort_keys=True) if overrides else None,
            "steps": cfg.steps,
            "checkpoint_freq": cfg.checkpoint_freq,
            "holdout_fraction": cfg.holdout_fraction,
            "uda_holdout_fraction": 0,
            "skip_model_save": True,
            "save_model_every_checkpoint": False,
            "mixjax": {
                "dataset_seeds": cfg.dataset.seeds,
                "dataset_seed": self.data_seed(cfg),
                "dataset_kwargs": cfg.dataset.kwargs,
                "model": model_args(cfg.model),
                "hparams": dict(self.hparams),
            },
        })
        if noise := label_noise_arg(cfg):   # only when used: earlier sweeps keep their hashes
            out["mixjax"]["label_noise"] = noise
        if cfg.dataset.open_set_unknown:   # open-set protocol (mixjax.dg.openset): its unknown classes
            out["mixjax"]["open_set_unknown"] = sorted(cfg.dataset.open_set_unknown)
        if cfg.crafted_val:   # the records carry the shifted accuracies (mixjax.dg.crafted_val)
            out["mixjax"]["crafted_val"] = list(cfg.crafted_val)
        return json.loads(json.dumps(out))  # tuples -> lists, as read back

    def hash(self, cfg: SweepConfig) -> str:
        """The job's identity and DomainBed's job directory name: md5 of the sorted-key JSON
        of the job's arguments (which hold no result-neutral setting: not ``output_dir``,
        ``vmap`` or the sweep's progress)."""
        return run_identity.digest(self.args(cfg), "md5")


def label_noise_arg(cfg: SweepConfig) -> float | dict[str, float] | None:
    """The label-noise protocol as a job's arguments record it (``mixjax.dg.label_noise``): the
    rate given for every env, or ``{env: rate}`` without zero rates; None without noise."""
    spec = cfg.dataset.label_noise
    if isinstance(spec, dict):
        return {k: float(v) for k, v in sorted(spec.items()) if v} or None
    return float(spec) or None


def test_env_sets(num_envs: int, mode: str) -> list[tuple[int, ...]]:
    singles = [(i,) for i in range(num_envs)]
    if mode == "single":
        return singles
    return singles + [tuple(p) for p in itertools.combinations(range(num_envs), 2)]


def job_hparams(cfg: SweepConfig, algorithm: str, hparams_seed: int, trial_seed: int) -> dict[str, Any]:
    space = {**A.get(algorithm).hparam_space(H.is_small(cfg.dataset.name)), **H.network_space(cfg.model.featurizer)}
    hp = H.draw(space, hparams_seed, trial_seed)
    hp.update({k: v for k, v in cfg.hparam_overrides.items() if k in space})
    return hp


def make_jobs(cfg: SweepConfig, num_envs: int) -> list[Job]:
    jobs = []
    for alg in cfg.algorithms:
        for te in test_env_sets(num_envs, cfg.test_envs):
            for h in range(cfg.n_hparams):
                for t in range(cfg.n_trials):
                    hp = job_hparams(cfg, alg, h, t)
                    jobs.append(Job(cfg.dataset.name, alg, te, h, t, tuple(sorted(hp.items()))))
    return jobs


def split_env(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """DomainBed ``misc.split_dataset``: RandomState(seed).shuffle(range(n)); out = first n*f, in = rest."""
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return np.asarray(keys[n_out:], np.int32), np.asarray(keys[:n_out], np.int32)  # (in, out)


def group_key(job: Job) -> tuple:
    static, _ = H.split_static(dict(job.hparams))
    return (job.algorithm, static, len(job.test_envs))


def make_groups(jobs: Iterable[Job], max_group: int, batched: bool) -> list[list[Job]]:
    """Jobs of one shape (``group_key``) in groups of at most ``max_group`` when ``batched``;
    each job alone otherwise."""
    if not batched:
        return [[j] for j in jobs]
    by_key: dict[tuple, list[Job]] = {}
    for j in jobs:
        by_key.setdefault(group_key(j), []).append(j)
    return [g[i : i + max_group] for g in by_key.values() for i in range(0, len(g), max_group)]


def net_spec(cfg: SweepConfig, data: D.EnvDataset) -> NetSpec:
    m = cfg.model
    return NetSpec(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        featurizer=m.featurizer,
        cnn_widths=tuple(m.cnn_widths),
        mlp_width=m.mlp_width,
        mlp_depth=m.mlp_depth,
        resnet_widths=tuple(m.resnet_widths),
        resnet_blocks=m.resnet_blocks,
        pretrained=m.pretrained,
    )
