"""A group of DG jobs as a client of the run engine (:mod:`mixjax.run.engine`).

One *unit* (a vmapped group, or one job run alone) is one engine run: its step is
the group's compiled step, its evaluation DomainBed's record at the steps 0, freq,
2 freq, ..., steps - 1, and every record is also a checkpoint
(``<ckpt_root>/<md5 of the jobs>/checkpoints``: the algorithm state, the key, the
records so far and the image pipeline's position). A job killed between records
resumes from the last one and ends with the records and the state of an
uninterrupted job; SIGTERM/SIGINT checkpoint and stop the sweep cleanly
(:class:`Interrupted`). The sweep removes a unit's checkpoints once its jobs'
results are written.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import datasets as D
from mixjax.dg import hparams as H
from mixjax.dg import crafted_val
from mixjax.dg import image_pipeline as P
from mixjax.dg import label_noise as LN
from mixjax.dg import test_time
from mixjax.dg.config import SweepConfig
from mixjax.dg.group_runner import DeviceData, GroupRunner
from mixjax.dg.jobs import RNG_IMPL, Job, group_key, net_spec
from mixjax.run import checkpoints as run_ckpt
from mixjax.run import engine, feeds
from mixjax.run.signals import Interrupted
from mixjax.train import checkpoint as ckpt_lib


def record_marks(steps: int, freq: int) -> set[int]:
    """0-based steps after which DomainBed records: 0, freq, 2 freq, ..., steps - 1."""
    return set(range(0, steps, freq)) | {steps - 1}


def job_batches(cfg: SweepConfig, data: D.EnvDataset, jobs: list[Job], jds: list[dict], batch_size: int,
                stacked: bool, start: int = 0):
    """Iterator over the group's training steps ``start ..`` ``(x, y)``: host minibatches from one
    grain pipeline (``image_pipeline``); ``stacked`` adds the group axis of a vmapped group."""
    specs = tuple(P.for_job(data, jd["in_idx"], jd["in_len"], jd["train_envs"], batch_size,
                            data.input_shape[0], job.seed, augment=data.augment, labels=jd.get("y"))
                  for job, jd in zip(jobs, jds))
    batches = P.GroupBatches(specs) if stacked else specs[0]
    for item in P.train_batches(batches, cfg.steps, workers=cfg.data_workers, start=start):
        yield item["x"], item["y"]


def host_fed(data: D.EnvDataset) -> bool:
    """Training minibatches come from the image pipeline (augmented image folders)."""
    return data.files is not None and data.augment


class _Steps:
    """The data stream of a unit: host minibatches (image pipeline) or none (sampled on the
    device); its state is its position."""

    def __init__(self, start: int, make=None):
        self.t, self._it = start, None if make is None else make(start)

    def __next__(self):
        self.t += 1
        return None if self._it is None else next(self._it)

    def get_state(self) -> dict:
        return {"t": self.t}

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # releases the pipeline (and its worker processes) now, not at GC


def unit_id(cfg: SweepConfig, jobs: list[Job]) -> str:
    return hashlib.md5("|".join(sorted(j.hash(cfg) for j in jobs)).encode()).hexdigest()


def discard_checkpoints(ckpt_root: pathlib.Path, cfg: SweepConfig, jobs: list[Job]) -> None:
    """Removes the checkpoints of the units of ``jobs`` (their results are written), and
    ``ckpt_root`` once it is empty."""
    for unit in [jobs] + ([[j] for j in jobs] if len(jobs) > 1 else []):
        shutil.rmtree(pathlib.Path(ckpt_root) / unit_id(cfg, unit), ignore_errors=True)
    try:   # the run dir holds job dirs only (DomainBed's readers list it) once nothing runs
        pathlib.Path(ckpt_root).rmdir()
    except OSError:
        pass


class DGClient(engine.Client):
    """One unit: the group's step, its interval metrics and DomainBed's records."""

    def __init__(self, runner: GroupRunner, hp, jd, dev: DeviceData, jobs: list[Job], *, fed: bool,
                 batched: bool, num_envs: int, steps_per_epoch: dict, records: dict):
        self.runner, self.hp, self.jd, self.dev, self.jobs = runner, hp, jd, dev, jobs
        self.fed, self.batched, self.num_envs = fed, batched, num_envs
        self.steps_per_epoch, self.records = steps_per_epoch, records
        self.total, self.n, self.t0 = None, 0, time.perf_counter()

    def step(self, state, batch):
        if self.fed:
            alg, kd, m = self.runner.step_fed(self.hp, state["alg"], state["key"], *batch)
        else:
            alg, kd, m = self.runner.step(self.hp, state["alg"], state["key"], self.jd, self.dev.X, self.dev.Y)
        return {"alg": alg, "key": kd}, m

    def after_step(self, t, state, m) -> None:
        self.total = m if self.total is None else jax.tree.map(jnp.add, self.total, m)
        self.n += 1

    def evaluate(self, state, done: int, on_grid: bool):
        # DomainBed records the mean of each step value over the checkpoint interval
        metrics = jax.block_until_ready(jax.tree.map(lambda v: v / self.n, self.total))
        step_time = (time.perf_counter() - self.t0) / self.n / len(self.jobs)  # a vmapped group shares the time
        step = done - 1
        tt_cost = before = None
        hook = test_time.uses_hook(self.runner.alg)
        if hook:   # the algorithm's test-time procedure, per env
            in_acc, out_acc, tt_cost = test_time.evaluate(self.runner, state["alg"], self.jd, self.dev,
                                                          len(self.jobs))
            # the same model without its test-time step (plain predict): accuracy before/after
            before = self.runner.evaluate(state["alg"], self.jd, self.dev.X, self.dev.Y, len(self.jobs))
        else:
            in_acc, out_acc = self.runner.evaluate(state["alg"], self.jd, self.dev.X, self.dev.Y, len(self.jobs))
        # the crafted-shift copies of every env (mixjax.dg.crafted_val), evaluated as the envs
        # are: through the test-time procedure when the algorithm has one, so that the "crafted"
        # selection validates what the algorithm predicts at test time
        def accuracies(x):
            if hook:
                return test_time.evaluate(self.runner, state["alg"], self.jd, self.dev, len(self.jobs), X=x)[:2]
            return self.runner.evaluate(state["alg"], self.jd, x, self.dev.Y, len(self.jobs))

        shifted = {f: accuracies(x) for f, x in getattr(self.dev, "shifted", {}).items()}
        in_acc, out_acc, metrics, tt_cost, before, shifted = jax.device_get(
            (in_acc, out_acc, metrics, tt_cost, before, shifted))
        for g, job in enumerate(self.jobs):
            pick = (lambda a: a[g]) if self.batched else (lambda a: a)
            rec = {"step": step, "epoch": step / self.steps_per_epoch[job], "step_time": step_time}
            for e in range(self.num_envs):
                rec[f"env{e}_in_acc"] = float(pick(in_acc)[e])
                rec[f"env{e}_out_acc"] = float(pick(out_acc)[e])
            for k, v in metrics.items():
                rec[k] = float(pick(v))
            if tt_cost is not None:
                rec["test_time_s"] = tt_cost["test_time_s"]
                for e in range(self.num_envs):
                    if np.isfinite(c := float(pick(tt_cost["tt_cost"])[e])):
                        rec[f"env{e}_tt_cost"] = c
                for e in range(self.num_envs):
                    rec[f"env{e}_in_acc{test_time.BEFORE}"] = float(pick(before[0])[e])
                    rec[f"env{e}_out_acc{test_time.BEFORE}"] = float(pick(before[1])[e])
            for f, (_, out_f) in shifted.items():   # crafted-shift validation copies
                for e in range(self.num_envs):
                    rec[crafted_val.record_key(e, f)] = float(pick(out_f)[e])
            rec["hparams"] = dict(job.hparams)
            self.records[job].append(rec)
        if (open_set := getattr(self.dev, "open_set", None)) is not None:   # mixjax.dg.openset
            open_set.add_metrics(self.runner, state["alg"], self.jd, self.dev.X, self.jobs, self.batched,
                                 self.records)
        self.total, self.n, self.t0 = None, 0, time.perf_counter()
        return state

    def host_state(self, done: int) -> dict:
        # a stop between records saves the interval's running sums too (float32 -> JSON ->
        # float32 is exact), so the resumed record averages the same steps
        interval = None if self.total is None else {
            "n": self.n, "sum": {k: [str(v.dtype), np.asarray(v).tolist()]
                                 for k, v in jax.device_get(self.total).items()}}
        return {"records": [self.records[j] for j in self.jobs], "interval": interval}

    def set_interval(self, interval: dict | None) -> None:
        if interval:
            self.n = int(interval["n"])
            self.total = {k: jnp.asarray(np.asarray(v, dtype)) for k, (dtype, v) in interval["sum"].items()}


def add_noisy_labels(cfg: SweepConfig, data: D.EnvDataset, jobs: list[Job], jds: list[dict]) -> None:
    """Label-noise protocol (``mixjax.dg.label_noise``): each job's arrays get ``y``, its labels
    (noisy training envs, clean test envs), which its step samples and its evaluation scores."""
    rates = LN.env_rates(cfg.dataset.label_noise, data.env_names, data.name)
    if not rates:
        return
    noisy: dict[int, dict] = {}
    for job, jd in zip(jobs, jds):
        seed = job.data_seed(cfg)
        if seed not in noisy:
            noisy[seed] = LN.noisy_envs(data, rates, seed)
        jd["y"] = LN.job_labels(data, noisy[seed], job.test_envs)


def run_group(cfg: SweepConfig, data: D.EnvDataset, dev: DeviceData, jobs: list[Job], batched: bool,
              runner_cache: dict | None = None, ckpt_root: str | pathlib.Path | None = None,
              log: Callable[[str], None] = lambda line: None) -> dict[Job, list[dict]]:
    """Train ``jobs`` (one group) and return each job's DomainBed records (``args`` and
    ``output_dir`` are added by the caller). ``ckpt_root``: where each unit checkpoints at
    its records and resumes from (None: no checkpoints)."""
    alg_name, static, _ = group_key(jobs[0])
    alg_cls = A.get(alg_name)
    num_train_envs = data.num_envs - len(jobs[0].test_envs)
    alg = alg_cls(net=net_spec(cfg, data), num_envs=num_train_envs, static=static)
    key = (alg, batched, cfg.eval_batch)
    cache = runner_cache if runner_cache is not None else {}
    if key not in cache:
        cache[key] = GroupRunner(alg, dict(static)["batch_size"], cfg.eval_batch, batched)
    runner = cache[key]

    hps = [H.split_static(dict(j.hparams))[1] for j in jobs]
    jds = [dev.job_arrays(j, cfg.holdout_fraction) for j in jobs]
    add_noisy_labels(cfg, data, jobs, jds)
    keys = [jax.random.key(j.seed, impl=RNG_IMPL) for j in jobs]
    if batched:
        hp = {k: jnp.asarray([h[k] for h in hps], jnp.float32) for k in hps[0]}
        jd = {k: jnp.asarray(np.stack([d[k] for d in jds])) for k in jds[0]}
        init_keys, train_keys = jnp.stack([jax.random.split(k)[0] for k in keys]), jnp.stack([jax.random.split(k)[1] for k in keys])
        units = [(hp, jd, init_keys, train_keys, jobs)]
    else:
        units = [
            ({k: jnp.float32(v) for k, v in h.items()}, {k: jnp.asarray(v) for k, v in d.items()}, *jax.random.split(k), [j])
            for h, d, k, j in zip(hps, jds, keys, jobs)
        ]
    batch_size = dict(static)["batch_size"]
    # DomainBed: steps_per_epoch = min over all envs' in-splits of len / batch_size
    steps_per_epoch = {j: min(int(n) for n in d["in_len"]) / batch_size for j, d in zip(jobs, jds)}
    records: dict[Job, list[dict]] = {j: [] for j in jobs}
    fed = host_fed(data)
    marks = record_marks(cfg.steps, cfg.checkpoint_freq)
    at_record = lambda done: (done - 1) in marks  # noqa: E731
    for hp, jd, init_key, train_key, unit_jobs in units:
        state = {"alg": runner.init(init_key, hp), "key": jax.random.key_data(train_key)}
        ck = None if ckpt_root is None else ckpt_lib.Checkpointer(
            pathlib.Path(ckpt_root) / unit_id(cfg, unit_jobs) / "checkpoints", keep=1, async_save=True)
        try:
            got = None if ck is None else run_ckpt.resume(ck, state, log=log)
            start = 0
            if got is not None:
                state, start = got.state, got.step
                for j, recs in zip(unit_jobs, got.host["records"]):
                    records[j] = list(recs)
                log(f"{unit_jobs[0].id} (+{len(unit_jobs) - 1} jobs): resumed at step {start}")
            make = None
            if fed:
                unit_jds = [jds[jobs.index(j)] for j in unit_jobs]
                make = lambda s: job_batches(cfg, data, unit_jobs, unit_jds, batch_size,  # noqa: E731
                                             stacked=batched, start=s)
            stream = _Steps(start, make)
            client = DGClient(runner, hp, jd, dev, unit_jobs, fed=fed, batched=batched,
                              num_envs=data.num_envs, steps_per_epoch=steps_per_epoch, records=records)
            if got is not None:
                client.set_interval(got.host.get("interval"))
            try:
                out = engine.run_steps(client, state, feeds.InlineFeed(stream, start=start), start=start,
                                       total=cfg.steps, checkpointer=ck, ckpt_at=at_record, eval_at=at_record)
            finally:
                stream.close()
        finally:
            if ck is not None:
                ck.close()
        if out.stopped:
            raise Interrupted(f"stopped at step {out.done} of {unit_jobs[0].id} (signal {out.signal}); "
                              "rerun the sweep to resume it", out.signal)
    return records
