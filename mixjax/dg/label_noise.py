"""Label noise injected per environment: the ``dataset.label_noise`` protocol of ``mixjax dg sweep``.

``dataset.label_noise`` is one rate for every environment, or ``{env name: rate}`` (the envs not
named keep clean labels). In a job, every **training** env ``e`` with rate ``r_e > 0`` has exactly
``k_e = round(r_e * n_e)`` of its ``n_e`` labels flipped (Python's ``round``: halves to even),
symmetric noise: the ``k_e`` positions are ``rng.choice(n_e, k_e, replace=False)`` and each flipped
label moves to ``(y + u) mod C`` with ``u ~ U{1, ..., C-1}`` (a uniformly drawn *other* class), where
``rng = default_rng(seed_hash("label_noise", data_seed, env name))`` - a deterministic function of
the dataset realisation's seed (``dataset.seed``, or the job seed with ``dataset.seeds=per_job``)
and the env, so every job that trains on env ``e`` sees the same noisy labels.

Choices (stated, not taken from a reference implementation; label-noise DG studies such as
Qiao & Low, "Understanding Domain Generalization: A Noise Robustness Perspective", ICLR 2024,
flip training labels and evaluate on clean test domains):

* the noise covers the whole training env, its in-split (trained on) and its out-split, so the
  training-domain validation score is measured against noisy labels, as a practitioner holding
  only noisy data would measure it;
* the labels of a job's **test** envs are never flipped: their in-/out-split accuracies (the
  reported number, the oracle's and leave-one-domain-out's validation) are against clean labels;
* the records carry ``args.mixjax.label_noise = {env name: rate}`` (non-zero rates only; absent
  without noise, so earlier sweeps keep their job hashes) and ``mixjax dg table`` names the
  noise in each table's dataset title.
"""

from __future__ import annotations

import numpy as np

from mixjax.config import ConfigError
from mixjax.dg import hparams as H

KEY = "dataset.label_noise"


def env_rates(spec: float | dict, env_names, dataset: str = "the dataset") -> dict[str, float]:
    """``{env name: rate}`` for the envs with a non-zero rate; ``ConfigError`` naming the key for an
    unknown env or a rate outside [0, 1]."""
    names = list(env_names)
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise ConfigError(f"config key {KEY!r}: {unknown[0]!r} is not an environment of {dataset} "
                              f"(its environments: {names})")
        rates = {k: float(v) for k, v in spec.items()}
    else:
        rates = {k: float(spec) for k in names}
    for k, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ConfigError(f"config key {KEY!r}: rate {r} for env {k!r} is outside [0, 1]")
    return {k: r for k, r in rates.items() if r > 0.0}


def flip_labels(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """``y`` with exactly ``round(rate * len(y))`` labels moved to a uniformly drawn other class."""
    y = np.asarray(y, np.int32)
    if num_classes < 2:
        raise ConfigError(f"config key {KEY!r}: label noise needs at least 2 classes")
    k = round(rate * len(y))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), k, replace=False)
    out = y.copy()
    out[idx] = (y[idx] + rng.integers(1, num_classes, k)) % num_classes
    return out


def noisy_envs(data, rates: dict[str, float], data_seed: int) -> dict[int, np.ndarray]:
    """``{env index: noisy labels}`` for the envs with a rate."""
    out = {}
    for i, name in enumerate(data.env_names):
        if name in rates:
            out[i] = flip_labels(data.envs[i][1], rates[name], data.num_classes,
                                 H.seed_hash("label_noise", int(data_seed), name))
    return out


def job_labels(data, noisy: dict[int, np.ndarray], test_envs) -> np.ndarray:
    """``int32[E, N_max]`` (padded with 0 like ``DeviceData.Y``): a job's labels - the noisy labels
    of its training envs, the clean ones of its test envs."""
    y = np.zeros((data.num_envs, max(data.sizes())), np.int32)
    for i, (_, yi) in enumerate(data.envs):
        y[i, : len(yi)] = noisy[i] if (i in noisy and i not in test_envs) else yi
    return y
