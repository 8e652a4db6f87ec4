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
finishes; a rerun skips jobs whose ``done`` exists, and a job's arguments
include steps, checkpoint frequency, holdout, dataset, model and resolved
hparams, so a changed setting never reuses a stale result.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import datasets as D
from mixjax.dg import hparams as H
from mixjax.dg import image_pipeline as P
from mixjax.dg import test_time
from mixjax.dg import transforms as T
from mixjax import run_identity
from mixjax.config import ConfigError
from mixjax.dg.config import SweepConfig, from_dict, merge_into_existing, model_args, to_json
from mixjax.dg.networks import NetSpec, training

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
        return json.loads(json.dumps(out))  # tuples -> lists, as read back

    def hash(self, cfg: SweepConfig) -> str:
        """The job's identity and DomainBed's job directory name: md5 of the sorted-key JSON
        of the job's arguments (which hold no result-neutral setting: not ``output_dir``,
        ``vmap`` or the sweep's progress)."""
        return run_identity.digest(self.args(cfg), "md5")


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


class DeviceData:
    """All envs padded into ``X f32[E, N, ...]``, ``Y int32[E, N]`` on the device."""

    def __init__(self, data: D.EnvDataset):
        self.sizes = data.sizes()
        n = max(self.sizes)
        e = data.num_envs
        x = np.zeros((e, n, *data.input_shape), np.float32)
        y = np.zeros((e, n), np.int32)
        for i, (xi, yi) in enumerate(data.envs):
            x[i, : len(yi)], y[i, : len(yi)] = xi, yi
        self.X, self.Y = jnp.asarray(x), jnp.asarray(y)
        self.env_meta = test_time.env_metadata(data)   # per-env numbers for test-time hooks

    def job_arrays(self, job: Job, holdout_fraction: float) -> dict[str, np.ndarray]:
        e, n = self.Y.shape
        splits = [split_env(size, holdout_fraction, H.seed_hash(job.trial_seed, i)) for i, size in enumerate(self.sizes)]
        n_in = max(len(s[0]) for s in splits)
        in_idx = np.zeros((e, n_in), np.int32)
        in_mask = np.zeros((e, n), bool)
        out_mask = np.zeros((e, n), bool)
        for i, (ins, outs) in enumerate(splits):
            in_idx[i, : len(ins)] = ins
            in_mask[i, ins] = True
            out_mask[i, outs] = True
        return {
            "train_envs": np.asarray([i for i in range(e) if i not in job.test_envs], np.int32),
            "in_idx": in_idx,
            "in_len": np.asarray([len(s[0]) for s in splits], np.int32),
            "in_mask": in_mask,
            "out_mask": out_mask,
        }


class GroupRunner:
    """Compiled train/eval functions for one group shape; ``batched`` vmaps them over jobs."""

    def __init__(self, alg: A.Algorithm, batch_size: int, eval_batch: int, batched: bool):
        self.alg, self.b, self.eval_batch, self.batched = alg, batch_size, eval_batch, batched
        self._train = None
        self._train_fed = None
        self._eval = None
        self._init = None

    def _sample(self, key, jd, X, Y):
        te = jd["train_envs"]
        k = te.shape[0]
        u = jax.random.randint(key, (k, self.b), 0, jd["in_len"][te][:, None])
        # one row gather from the flattened [E * N, ...] images: under vmap the index array
        # just grows a batch axis, and the images (shared by all jobs) are never batched
        flat = te[:, None] * X.shape[1] + jd["in_idx"][te[:, None], u]
        xs = jnp.take(X.reshape(-1, *X.shape[2:]), flat, axis=0)
        return xs, jnp.take(Y.reshape(-1), flat, axis=0)

    def _update(self, hp, state, xs, ys, ku):
        # training mode (DomainBed ResNets' feature dropout) with a key derived from the
        # update's, so networks without dropout see exactly the key stream they always had
        with training(jax.random.fold_in(ku, 0xD0), hp.get("resnet_dropout", 0.0)):
            return self.alg.update(hp, state, xs, ys, ku)

    def _step_fn(self):
        def step(hp, state, key, jd, X, Y):
            key, kb, ku = jax.random.split(key, 3)
            xs, ys = self._sample(kb, jd, X, Y)
            state, metrics = self._update(hp, state, xs, ys, ku)
            return state, key, metrics

        if self.batched:
            step = jax.vmap(step, in_axes=(0, 0, 0, 0, None, None))
        return jax.jit(step, donate_argnums=(1,))

    def _fed_step_fn(self):
        """The step on host-made minibatches (uint8 images, normalised here, on the device)."""
        def step(hp, state, key, xs, ys):
            key, _, ku = jax.random.split(key, 3)  # the same key stream as the on-device sampler's
            state, metrics = self._update(hp, state, T.normalize(xs), ys, ku)
            return state, key, metrics

        if self.batched:
            step = jax.vmap(step)
        return jax.jit(step, donate_argnums=(1,))

    def train_fed(self, batches, hp, state, key):
        """One compiled step per host minibatch ``(x uint8[(G,) K, b, s, s, 3], y int32[(G,) K, b])``."""
        if self._train_fed is None:
            self._train_fed = self._fed_step_fn()
        total, n = None, 0
        for x, y in batches:
            state, key, metrics = self._train_fed(hp, state, key, x, y)
            total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
            n += 1
        return state, key, jax.tree.map(lambda v: v / n, total)

    def train(self, n_steps: int, hp, state, key, jd, X, Y):
        """``n_steps`` compiled steps, dispatched from Python (asynchronously; nothing syncs).

        Not a ``fori_loop``/``scan``: XLA:CPU runs convolutions inside a rolled loop about 5x
        slower than the same step called from Python (measured on MNIST_CNN), and the
        per-call dispatch is cheap next to a step.
        """
        if self._train is None:
            self._train = self._step_fn()
        total = None
        for _ in range(n_steps):
            state, key, metrics = self._train(hp, state, key, jd, X, Y)
            total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
        # DomainBed records the mean of each step value over the checkpoint interval
        return state, key, jax.tree.map(lambda v: v / n_steps, total)

    def init(self, keys, hp):
        if self._init is None:
            fn = self.alg.init
            self._init = jax.jit(jax.vmap(fn) if self.batched else fn)
        return self._init(keys, hp)

    def evaluate(self, state, jd, X, Y, group_size: int):
        if self._eval is None:
            chunk = max(32, self.eval_batch // group_size)

            context = getattr(self.alg, "eval_context", None)

            def ev(state, jd, X, Y):
                e, n = Y.shape
                if context:  # predictions depend on the batch (ARM): batches of one env, no padding rows
                    size = jnp.maximum((jd["in_mask"] | jd["out_mask"]).sum(1), 1)
                    idx = jnp.arange(-(-n // context) * context)[None, :] % size[:, None]
                    batches = jnp.take_along_axis(X, idx.reshape(e, -1, *([1] * (X.ndim - 2))), 1)
                    batches = batches.reshape(-1, context, *X.shape[2:])
                    preds = jax.lax.map(lambda xb: jnp.argmax(self.alg.predict(state, xb), -1), batches)
                    correct = (preds.reshape(e, -1)[:, :n] == Y).astype(jnp.float32)
                    acc = lambda m: (correct * m).sum(1) / jnp.maximum(m.sum(1), 1)  # noqa: E731
                    return acc(jd["in_mask"]), acc(jd["out_mask"])
                flat = X.reshape(e * n, *X.shape[2:])
                pad = (-flat.shape[0]) % chunk
                flat = jnp.concatenate([flat, jnp.zeros((pad, *flat.shape[1:]), flat.dtype)])
                preds = jax.lax.map(
                    lambda xb: jnp.argmax(self.alg.predict(state, xb), -1), flat.reshape(-1, chunk, *flat.shape[1:])
                )
                correct = (preds.reshape(-1)[: e * n].reshape(e, n) == Y).astype(jnp.float32)
                acc = lambda m: (correct * m).sum(1) / jnp.maximum(m.sum(1), 1)  # noqa: E731
                return acc(jd["in_mask"]), acc(jd["out_mask"])

            if self.batched:
                ev = jax.vmap(ev, in_axes=(0, 0, None, None))
            self._eval = jax.jit(ev)
        return self._eval(state, jd, X, Y)


def checkpoint_chunks(steps: int, freq: int) -> list[int]:
    """Scan lengths between records; records follow DomainBed's steps 0, freq, 2 freq, ..., steps - 1."""
    marks = sorted({t for t in range(0, steps, freq)} | {steps - 1})
    return [marks[0] + 1] + [b - a for a, b in zip(marks, marks[1:])]


def job_batches(cfg: SweepConfig, data: D.EnvDataset, jobs: list[Job], jds: list[dict], batch_size: int,
                stacked: bool):
    """Iterator over the group's training steps ``(x, y)``: host minibatches from one grain
    pipeline (``image_pipeline``); ``stacked`` adds the group axis of a vmapped group."""
    specs = tuple(P.for_job(data, jd["in_idx"], jd["in_len"], jd["train_envs"], batch_size,
                            data.input_shape[0], job.seed, augment=data.augment) for job, jd in zip(jobs, jds))
    batches = P.GroupBatches(specs) if stacked else specs[0]
    for item in P.train_batches(batches, cfg.steps, workers=cfg.data_workers):
        yield item["x"], item["y"]


def host_fed(data: D.EnvDataset) -> bool:
    """Training minibatches come from the image pipeline (augmented image folders)."""
    return data.files is not None and data.augment


def run_group(cfg: SweepConfig, data: D.EnvDataset, dev: DeviceData, jobs: list[Job], batched: bool,
              runner_cache: dict | None = None) -> dict[Job, list[dict]]:
    """Train ``jobs`` (one group) and return each job's DomainBed records (``args`` and
    ``output_dir`` are added by the caller)."""
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
    keys = [jax.random.key(j.seed, impl=RNG_IMPL) for j in jobs]
    if batched:
        hp = {k: jnp.asarray([h[k] for h in hps], jnp.float32) for k in hps[0]}
        jd = {k: jnp.asarray(np.stack([d[k] for d in jds])) for k in jds[0]}
        init_keys, train_keys = jnp.stack([jax.random.split(k)[0] for k in keys]), jnp.stack([jax.random.split(k)[1] for k in keys])
        groups = [(hp, jd, init_keys, train_keys, jobs)]
    else:
        groups = [
            ({k: jnp.float32(v) for k, v in h.items()}, {k: jnp.asarray(v) for k, v in d.items()}, *jax.random.split(k), [j])
            for h, d, k, j in zip(hps, jds, keys, jobs)
        ]
    batch_size = dict(static)["batch_size"]
    # DomainBed: steps_per_epoch = min over all envs' in-splits of len / batch_size
    steps_per_epoch = {j: min(int(n) for n in d["in_len"]) / batch_size for j, d in zip(jobs, jds)}
    records: dict[Job, list[dict]] = {j: [] for j in jobs}
    fed = host_fed(data)
    for hp, jd, init_key, train_key, group_jobs in groups:
        state = runner.init(init_key, hp)
        step = -1
        if fed:
            group_jds = [jds[jobs.index(j)] for j in group_jobs]
            stream = job_batches(cfg, data, group_jobs, group_jds, batch_size, stacked=batched)
        for n in checkpoint_chunks(cfg.steps, cfg.checkpoint_freq):
            t0 = time.perf_counter()
            if fed:
                state, train_key, metrics = runner.train_fed(itertools.islice(stream, n), hp, state, train_key)
            else:
                state, train_key, metrics = runner.train(n, hp, state, train_key, jd, dev.X, dev.Y)
            metrics = jax.block_until_ready(metrics)
            step_time = (time.perf_counter() - t0) / n / len(group_jobs)  # a vmapped group shares the time
            step += n
            tt_cost = None
            if test_time.uses_hook(alg):   # the algorithm's test-time procedure, per env
                in_acc, out_acc, tt_cost = test_time.evaluate(runner, state, jd, dev,
                                                              len(group_jobs))
            else:
                in_acc, out_acc = runner.evaluate(state, jd, dev.X, dev.Y, len(group_jobs))
            in_acc, out_acc, metrics, tt_cost = jax.device_get((in_acc, out_acc, metrics, tt_cost))
            for g, job in enumerate(group_jobs):
                pick = (lambda a: a[g]) if batched else (lambda a: a)
                rec = {"step": step, "epoch": step / steps_per_epoch[job], "step_time": step_time}
                for e in range(data.num_envs):
                    rec[f"env{e}_in_acc"] = float(pick(in_acc)[e])
                    rec[f"env{e}_out_acc"] = float(pick(out_acc)[e])
                for k, v in metrics.items():
                    rec[k] = float(pick(v))
                if tt_cost is not None:
                    rec["test_time_s"] = tt_cost["test_time_s"]
                    for e in range(data.num_envs):
                        if np.isfinite(c := float(pick(tt_cost["tt_cost"])[e])):
                            rec[f"env{e}_tt_cost"] = c
                rec["hparams"] = dict(job.hparams)
                records[job].append(rec)
        if fed:
            stream.close()  # releases the pipeline (and its worker processes) now, not at GC
    return records


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
    made with different settings (see ``config.merge_into_existing``).
    """
    run_dir = pathlib.Path(run_dir or cfg.output_dir)
    cfg, extended = resolve_config(cfg, run_dir)
    for line in extended:
        log(f"extending the sweep in {run_dir}: {line}")
    per_job = cfg.dataset.seeds == "per_job"
    data = D.get(cfg.dataset.name, cfg.dataset.seed, **cfg.dataset.kwargs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.json", to_json(cfg))
    write_atomic(run_dir / "envs.json", json.dumps({cfg.dataset.name: list(data.env_names)}))
    log(f"dataset {data.name}: envs {list(data.env_names)} sizes {data.sizes()} shape {data.input_shape}"
        + (" (one realisation per job)" if per_job else ""))
    all_jobs = make_jobs(cfg, data.num_envs)
    jobs = [j for j in all_jobs if not run_identity.is_finished(run_dir / j.hash(cfg))]
    # per-job data: a job trains on its own arrays, so jobs run one by one
    batched = use_vmap(cfg, data) and not per_job
    groups = make_groups(jobs, cfg.max_group, batched)
    log(f"{len(jobs)} jobs to run ({len(all_jobs) - len(jobs)} done) in {len(groups)} group(s); vmap={batched}")
    dev = None if per_job else DeviceData(data)
    cache: dict = {}
    t_all = time.perf_counter()
    from mixjax import progress
    bar = progress.bar(total=len(all_jobs), initial=len(all_jobs) - len(jobs), desc="dg sweep",
                       unit="job", disable=not jobs)   # jobs done / all jobs of the sweep
    for gi, group in enumerate(groups):
        t0 = time.perf_counter()
        if per_job:
            job_data = D.get(cfg.dataset.name, group[0].data_seed(cfg), **cfg.dataset.kwargs)
            records = run_group(cfg, job_data, DeviceData(job_data), group, batched, cache)
        else:
            records = run_group(cfg, data, dev, group, batched, cache)
        dt = time.perf_counter() - t0
        for job, recs in records.items():
            write_job(run_dir, cfg, job, recs)
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
