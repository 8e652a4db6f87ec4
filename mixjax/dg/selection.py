"""Model selection, as DomainBed defines it (``domainbed/model_selection.py``).

A *run* is one job (algorithm, test envs, hparams seed, trial seed); its
records are its checkpoints. Each method reduces a run to
``{"val_acc", "test_acc"}``; for one (trial, algorithm, test env) the run
(hparams seed) with the best ``val_acc`` is chosen and its ``test_acc`` is the
reported number. The test accuracy is always the test env's **in-split**
accuracy.

* ``training_domain`` (IID): val = mean out-split accuracy of the training envs
  (single-test-env runs); the checkpoint with the best val (early stopping).
* ``leave_one_out``: at each step, val = mean over v != test of env v's
  in-split accuracy in the run that held out {test, v}; needs every pair run
  (None otherwise, shown "X"); test acc from the single-test-env run at that
  step; the best step wins.
* ``oracle`` (test-domain validation): val = test env out-split accuracy of the
  **last** checkpoint; no early stopping.
* ``crafted`` (not DomainBed's; tabulated only for sweeps run with ``crafted_val``): val = mean
  over shift families of the training envs' shifted out-split accuracy at the last checkpoint
  (:func:`crafted_run_acc`, ``mixjax.dg.crafted_val``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

Record = dict


def num_envs(record: Record) -> int:
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return n


def _before(r: Record, test_env: int) -> dict:
    """The test env's in-split accuracy without the test-time step (plain ``predict``), for
    algorithms with a test-time procedure (``mixjax.dg.test_time``), and the seconds that
    checkpoint's test-time evaluation took; {} for the others."""
    v = r.get(f"env{test_env}_in_acc_before_tt")
    return {} if v is None else {"test_acc_before": v, "test_time_s": r.get("test_time_s", float("nan"))}


def _single(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if len(r["args"]["test_envs"]) == 1]


def _argmax(items: list[dict]) -> dict | None:
    items = [i for i in items if i is not None]
    if not items:
        return None
    return max(items, key=lambda i: i["val_acc"])  # first maximum, as Python's max


def training_domain_run_acc(run_records: Sequence[Record]) -> dict | None:
    recs = _single(run_records)
    if not recs:
        return None

    def step_acc(r):
        test_env = r["args"]["test_envs"][0]
        val = np.mean([r[f"env{i}_out_acc"] for i in range(num_envs(r)) if i != test_env])
        return {"val_acc": float(val), "test_acc": r[f"env{test_env}_in_acc"], "step": r["step"],
                **_before(r, test_env)}

    return _argmax([step_acc(r) for r in recs])


def leave_one_out_run_acc(run_records: Sequence[Record]) -> dict | None:
    by_step: dict[int, list[Record]] = defaultdict(list)
    for r in run_records:
        by_step[r["step"]].append(r)

    def step_acc(recs):
        tests = _single(recs)
        if len(tests) != 1:
            return None
        test_env = tests[0]["args"]["test_envs"][0]
        n = num_envs(recs[0])
        val = -np.ones(n)
        for r in recs:
            if len(r["args"]["test_envs"]) == 2:
                (v,) = set(r["args"]["test_envs"]) - {test_env}
                val[v] = r[f"env{v}_in_acc"]
        val = np.delete(val, test_env)
        if np.any(val == -1):
            return None
        return {"val_acc": float(val.sum() / (n - 1)), "test_acc": tests[0][f"env{test_env}_in_acc"],
                "step": recs[0]["step"], **_before(tests[0], test_env)}

    return _argmax([step_acc(recs) for _, recs in sorted(by_step.items())])


def oracle_run_acc(run_records: Sequence[Record]) -> dict | None:
    recs = _single(run_records)
    if not recs:
        return None
    last = max(recs, key=lambda r: r["step"])
    test_env = last["args"]["test_envs"][0]
    return {"val_acc": last[f"env{test_env}_out_acc"], "test_acc": last[f"env{test_env}_in_acc"], "step": last["step"],
            **_before(last, test_env)}


SHIFT_PREFIX = "_out_acc_shift_"


def shift_families(record: Record) -> list[str]:
    """The crafted-shift families a record was evaluated under (``mixjax.dg.crafted_val``)."""
    return sorted({k.split(SHIFT_PREFIX, 1)[1] for k in record if SHIFT_PREFIX in k})


def crafted_run_acc(run_records: Sequence[Record]) -> dict | None:
    """Crafted-shift validation (Efthymiadis et al., WACV 2025; ``mixjax.dg.crafted_val``): the
    **last** checkpoint (the reference scores the model after its last epoch); val = mean over the
    shift families of the mean over training envs of the shifted out-split accuracy; None (shown
    "X") for runs recorded without ``crafted_val``."""
    recs = _single(run_records)
    if not recs:
        return None
    last = max(recs, key=lambda r: r["step"])
    families = shift_families(last)
    if not families:
        return None
    test_env = last["args"]["test_envs"][0]
    train = [i for i in range(num_envs(last)) if i != test_env]
    val = np.mean([np.mean([last[f"env{i}{SHIFT_PREFIX}{f}"] for i in train]) for f in families])
    return {"val_acc": float(val), "test_acc": last[f"env{test_env}_in_acc"], "step": last["step"],
            **_before(last, test_env)}


METHODS: dict[str, tuple[str, Callable[[Sequence[Record]], dict | None]]] = {
    "training_domain": ("training-domain validation set", training_domain_run_acc),
    "leave_one_out": ("leave-one-domain-out cross-validation", leave_one_out_run_acc),
    "oracle": ("test-domain validation set (oracle)", oracle_run_acc),
    "crafted": ("crafted-shift validation set (augmented training-domain out-splits)", crafted_run_acc),
}
# DomainBed's three methods are always tabulated; the others only where some record has their data
OPTIONAL_METHODS = {"crafted": lambda r: bool(shift_families(r))}


def methods_for(records: Sequence[Record]) -> list[str]:
    """The selection methods to tabulate for ``records``."""
    return [m for m in METHODS if m not in OPTIONAL_METHODS or any(OPTIONAL_METHODS[m](r) for r in records)]


def dataset_label(args: dict) -> str:
    """The dataset a record's table row belongs to: DomainBed's ``args.dataset``, plus the
    protocol when the sweep injected label noise (``mixjax.dg.label_noise``), so noisy and clean
    runs never share a row."""
    noise = (args.get("mixjax") or {}).get("label_noise")
    # the open-set protocol (mixjax.dg.openset) trains on the known classes only: its own row
    unknown = (args.get("mixjax") or {}).get("open_set_unknown")
    suffix = f" (open set, unknown {','.join(map(str, unknown))})" if unknown else ""
    if not noise:
        return args["dataset"] + suffix
    if isinstance(noise, dict):
        return f"{args['dataset']} (label noise {', '.join(f'{k}={v:g}' for k, v in sorted(noise.items()))})" + suffix
    return f"{args['dataset']} (label noise {noise:g})" + suffix


def group_records(records: Sequence[Record]) -> dict[tuple, list[Record]]:
    """(trial_seed, dataset, algorithm, test_env) -> records; a pair run lands in both its envs' groups.
    ``dataset`` is :func:`dataset_label` (the name, plus any label-noise protocol)."""
    out: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        a = r["args"]
        for te in a["test_envs"]:
            out[(a["trial_seed"], dataset_label(a), a["algorithm"], te)].append(r)
    return out


def sweep_acc(records: Sequence[Record], method: str) -> dict | None:
    """Best hparams seed by val_acc among one group's runs -> its {val_acc, test_acc, step, hparams_seed}."""
    run_acc = METHODS[method][1]
    by_hp: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_hp[r["args"]["hparams_seed"]].append(r)
    best = None
    for h in sorted(by_hp):
        acc = run_acc(by_hp[h])
        # ties go to the later seed, as DomainBed's reversed stable sort does
        if acc is not None and (best is None or acc["val_acc"] >= best["val_acc"]):
            best = {**acc, "hparams_seed": h}
    return best
