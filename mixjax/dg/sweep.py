"""DomainBed-style sweeps, with runs of one shape trained together under ``jax.vmap``.

Protocol (facebookresearch/DomainBed ``scripts/train.py``, ``scripts/sweep.py``):

* jobs = algorithms x test-env sets x hparams seeds (0 = defaults) x trial
  seeds; test-env sets are every single env, plus every pair when
  ``test_envs="single+pairs"`` (leave-one-domain-out selection needs them);
* each env is split 20% out / 80% in with ``seed_hash(trial_seed, env)``;
  training draws one minibatch per non-test env per step from the in-splits;
* every ``checkpoint_freq`` steps (and at the last step) the in- and
  out-split accuracy of every env is recorded;
* job seed = ``seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)``.

Minibatches are drawn uniformly with replacement inside the compiled step, as
DomainBed's ``InfiniteDataLoader`` does (``lib/fast_data_loader.py``:
``RandomSampler(dataset, replacement=True)`` under a ``BatchSampler``); drawing
on the device keeps data there and the step pure. (Only DomainBed's evaluation
loader, ``FastDataLoader``, samples without replacement; evaluation here visits
every example once, which gives the same accuracies.)

Image folders with augmentation (DomainBed's default) are the exception: their
training minibatches are re-read from disk and augmented on the host by a grain
pipeline (``image_pipeline``; same with-replacement draws, seeded by the job
seed), handed to the compiled step as uint8 and normalised there; evaluation
still uses the in-memory evaluation-transform images.

Speed: jobs that share an algorithm, the static hyperparameters (batch size,
MLP widths) and the number of training envs form a *group*; one compiled
``vmap``-ed step trains the whole group (different trials, test envs and
continuous hyperparameters); minibatches are sampled on the device inside the
step, and evaluation is vmapped too. ``vmap=False`` runs the same jobs one by
one with the unbatched step (the baseline of ``benchmarks/bench_dg.py``).

Output (``RUN_DIR``), DomainBed's sweep layout, so its
``scripts/collect_results.py --input_dir RUN_DIR`` and ``list_top_hparams.py``
read it: ``config.json`` (the sweep; see ``config.merge_into_existing``),
``envs.json``, ``groups.jsonl`` (timings) and one directory per job named by
the md5 of its full resolved arguments (DomainBed ``scripts/sweep.py``:
``md5(json.dumps(train_args, sort_keys=True))``, ``output_dir`` excluded)
holding ``results.jsonl`` - one record per checkpoint with DomainBed's fields
(``args``, ``hparams``, ``step``, ``epoch``, ``step_time``, ``env{i}_in_acc``,
``env{i}_out_acc`` and the step's metrics averaged over the interval) - and a
``done`` marker. A job's records are written (atomically) when its group
finishes; until then the running group checkpoints at every record
(``RUN_DIR/.inflight/``, :mod:`mixjax.dg.group_client` on the run engine), so a
killed or stopped sweep resumes the group from its last record; a rerun skips jobs whose ``done`` exists, and a job's arguments
include steps, checkpoint frequency, holdout, dataset, model and resolved
hparams, so a changed setting never reuses a stale result.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Callable

import jax
import numpy as np

from mixjax import run_identity
from mixjax.run import logs
from mixjax.config import ConfigError
from mixjax.dg import datasets as D
from mixjax.dg import crafted_val, label_noise, openset, test_time
from mixjax.dg.config import SweepConfig, from_dict, merge_into_existing, to_json
from mixjax.dg.group_client import (Interrupted, discard_checkpoints, host_fed,  # noqa: F401
                                    job_batches, run_group)
from mixjax.dg.group_runner import DeviceData, GroupRunner, checkpoint_chunks  # noqa: F401
from mixjax.dg.jobs import (RNG_IMPL, Job, group_key, job_hparams, make_groups,  # noqa: F401
                            make_jobs, net_spec, split_env, test_env_sets)

# In-flight checkpoints of the running group (mixjax.dg.group_client), under the run dir.
INFLIGHT = ".inflight"

def write_atomic(path: pathlib.Path, text: str) -> None:
    """Write + fsync + rename, so a crash leaves the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_job(run_dir: pathlib.Path, cfg: SweepConfig, job: Job, records: list[dict]) -> pathlib.Path:
    """``RUN_DIR/<md5 of args>/results.jsonl`` (DomainBed's sorted-key lines), then the job's
    finished marker (``run_identity.mark_job_done``: DomainBed's ``done``)."""
    job_dir = run_dir / job.hash(cfg)
    job_dir.mkdir(exist_ok=True)
    args = {**job.args(cfg), "output_dir": str(job_dir)}
    lines = [json.dumps({**r, "args": args}, sort_keys=True) + "\n" for r in records]
    write_atomic(job_dir / "results.jsonl", "".join(lines))
    run_identity.mark_job_done(job_dir)
    return job_dir


def use_vmap(cfg: SweepConfig, data: D.EnvDataset) -> bool:
    """``cfg.vmap``, or (None) the measured choice: vmap on GPU/TPU, and on CPU only for MLP
    featurisers - XLA:CPU runs a vmapped convolution (a grouped conv) about 2x slower than the
    same jobs one by one (benchmarks/bench_dg.py), while vmapped MLPs are 1.7-4x faster."""
    if cfg.vmap is not None:
        return cfg.vmap
    return jax.default_backend() != "cpu" or net_spec(cfg, data).kind == "mlp"


def with_shifts(cfg: SweepConfig, data: D.EnvDataset, dev: DeviceData, data_seed: int) -> DeviceData:
    """``dev`` with ``shifted = {family: X f32[E, N, ...]}``, the crafted-shift copies of every env
    (``crafted_val``) that each record also evaluates."""
    import jax.numpy as jnp

    dev.shifted = {f: jnp.asarray(x) for f, x in crafted_val.shifted_envs(data, cfg.crafted_val, data_seed).items()}
    return dev


def load_data(cfg: SweepConfig, seed: int) -> tuple[D.EnvDataset, object]:
    """The sweep's dataset built from ``seed``; under the open-set protocol
    (``dataset.open_set_unknown``, :mod:`mixjax.dg.openset`) its known-class view and the split
    (``ConfigError`` naming the key for a bad class id or an env without known/unknown rows)."""
    data = D.get(cfg.dataset.name, seed, **cfg.dataset.kwargs)
    if not cfg.dataset.open_set_unknown:
        return data, None
    split = openset.split(data, cfg.dataset.open_set_unknown)
    return split.known, split


def device_data(cfg: SweepConfig, data: D.EnvDataset, split, data_seed: int) -> DeviceData:
    """``DeviceData`` with the crafted-shift copies (``with_shifts``) and, under the open-set
    protocol, ``open_set``: the unknown rows and their scoring (:mod:`mixjax.dg.openset_eval`)."""
    dev = with_shifts(cfg, data, DeviceData(data), data_seed)
    if split is not None:
        from mixjax.dg.openset_eval import OpenSetEval

        dev.open_set = OpenSetEval(split, cfg.eval_batch)
    return dev


def resolve_config(cfg: SweepConfig, run_dir: pathlib.Path) -> tuple[SweepConfig, list[str]]:
    """``cfg`` merged with the sweep already in ``run_dir`` (``ConfigError`` if they conflict)."""
    if (run_dir / "results.jsonl").exists():
        raise ConfigError(f"{run_dir} holds a sweep in the earlier single-file layout (results.jsonl); "
                          "`mixjax dg table` still reads it, but new jobs need another --run-dir")
    path = run_dir / "config.json"
    if not path.exists():
        return cfg, []
    try:
        existing = json.loads(path.read_text())
        from_dict(existing)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path} is not a sweep config ({e}); use another --run-dir") from None
    return merge_into_existing(existing, cfg)


def sweep(cfg: SweepConfig, run_dir: str | pathlib.Path | None = None, log: Callable[[str], None] = print) -> pathlib.Path:
    """Run (or resume, or extend) the sweep described by ``cfg``; returns the run directory.

    Raises ``ConfigError`` before anything is written or built when ``run_dir`` holds a sweep
    made with different settings (see ``config.merge_into_existing``), and ``Interrupted``
    when SIGTERM/SIGINT stopped it (the running unit checkpointed; calling again resumes).
    """
    run_dir = pathlib.Path(run_dir or cfg.output_dir)
    cfg, extended = resolve_config(cfg, run_dir)
    for line in extended:
        log(f"extending the sweep in {run_dir}: {line}")
    per_job = cfg.dataset.seeds == "per_job"
    data, split = load_data(cfg, cfg.dataset.seed)   # open set: the known classes (ConfigError first)
    test_time.check_requirements(cfg.algorithms, data, net_spec(cfg, data))   # before anything is written or compiled
    label_noise.env_rates(cfg.dataset.label_noise, data.env_names, data.name)   # names a wrong env / rate
    crafted_val.check(cfg.crafted_val, data)   # a shift family the data cannot take
    # per-job data: a job trains on its own arrays, so jobs run one by one
    batched = use_vmap(cfg, data) and not per_job
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.json", to_json(cfg))
    write_atomic(run_dir / "envs.json", json.dumps({cfg.dataset.name: list(data.env_names)}))
    logs.write_run_info(run_dir, {"kind": "dg_sweep", "dataset": cfg.dataset.name,
                                  "envs": list(data.env_names), "algorithms": list(cfg.algorithms),
                                  "devices": [str(d) for d in jax.devices()]})
    log(f"dataset {data.name}: envs {list(data.env_names)} sizes {data.sizes()} shape {data.input_shape}"
        + (" (one realisation per job)" if per_job else ""))
    if split is not None:
        log(f"open set: known classes {list(split.known_classes)} (labels 0..{len(split.known_classes) - 1}), "
            f"unknown {list(split.unknown_classes)}: {[len(u) for u in split.unknown_x]} unknown rows per env")
    all_jobs = make_jobs(cfg, data.num_envs)
    jobs = [j for j in all_jobs if not run_identity.is_finished(run_dir / j.hash(cfg))]
    groups = make_groups(jobs, cfg.max_group, batched)
    log(f"{len(jobs)} jobs to run ({len(all_jobs) - len(jobs)} done) in {len(groups)} group(s); vmap={batched}")
    dev = None if per_job else device_data(cfg, data, split, cfg.dataset.seed)
    cache: dict = {}
    t_all = time.perf_counter()
    from mixjax import progress
    bar = progress.bar(total=len(all_jobs), initial=len(all_jobs) - len(jobs), desc="dg sweep",
                       unit="job", disable=not jobs)   # jobs done / all jobs of the sweep
    inflight = run_dir / INFLIGHT
    for gi, group in enumerate(groups):
        t0 = time.perf_counter()
        try:
            if per_job:
                job_data, job_split = load_data(cfg, group[0].data_seed(cfg))
                job_dev = device_data(cfg, job_data, job_split, group[0].data_seed(cfg))
                records = run_group(cfg, job_data, job_dev, group, False, cache, inflight, log)
            else:
                records = run_group(cfg, data, dev, group, batched, cache, inflight, log)
        except Interrupted as e:
            bar.close()
            log(f"sweep interrupted: {e}")
            raise
        dt = time.perf_counter() - t0
        for job, recs in records.items():
            write_job(run_dir, cfg, job, recs)
        discard_checkpoints(inflight, cfg, group)
        with (run_dir / "groups.jsonl").open("a") as f:
            f.write(json.dumps({"algorithm": group[0].algorithm, "jobs": len(group), "seconds": dt}) + "\n")
        last = [(j, r) for j, recs in records.items() for r in recs if r["step"] == cfg.steps - 1]
        mean_acc = np.mean([r[f"env{j.test_envs[0]}_in_acc"] for j, r in last]) if last else math.nan
        log(f"[{gi + 1}/{len(groups)}] {group[0].algorithm} x{len(group)} jobs: {dt:.1f}s, "
            f"mean final test-env acc {100 * mean_acc:.1f}")
        bar.set_postfix_str(group[0].algorithm, refresh=False)
        bar.update(len(group))
    bar.close()
    log(f"sweep finished in {time.perf_counter() - t_all:.1f}s -> {run_dir}")
    return run_dir
