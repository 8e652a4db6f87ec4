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

Speed: jobs that share an algorithm, the static hyperparameters (batch size,
MLP widths) and the number of training envs form a *group*; one compiled
``vmap``-ed step trains the whole group (different trials, test envs and
continuous hyperparameters); minibatches are sampled on the device inside the
step, and evaluation is vmapped too. ``vmap=False`` runs the same jobs one by
one with the unbatched step (the baseline of ``benchmarks/bench_dg.py``).

Output (``RUN_DIR``): ``config.json``; ``results.jsonl`` with one record per
(job, checkpoint) in DomainBed's record layout (``args``, ``step``,
``env{i}_in_acc``, ``env{i}_out_acc``, metrics); ``groups.jsonl`` with timings.
A finished job's records are written when its group finishes; rerunning the
same command skips finished jobs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import datasets as D
from mixjax.dg import hparams as H
from mixjax.dg.config import SweepConfig, to_json
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

    def args(self) -> dict:
        return {
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "test_envs": list(self.test_envs),
            "hparams_seed": self.hparams_seed,
            "trial_seed": self.trial_seed,
            "seed": self.seed,
            "hparams": dict(self.hparams),
        }


def test_env_sets(num_envs: int, mode: str) -> list[tuple[int, ...]]:
    singles = [(i,) for i in range(num_envs)]
    if mode == "single":
        return singles
    return singles + [tuple(p) for p in itertools.combinations(range(num_envs), 2)]


def job_hparams(cfg: SweepConfig, algorithm: str, hparams_seed: int, trial_seed: int) -> dict[str, Any]:
    space = A.get(algorithm).hparam_space(H.is_small(cfg.dataset.name))
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

    def _step_fn(self):
        def step(hp, state, key, jd, X, Y):
            key, kb, ku = jax.random.split(key, 3)
            xs, ys = self._sample(kb, jd, X, Y)
            state, metrics = self.alg.update(hp, state, xs, ys, ku)
            return state, key, metrics

        if self.batched:
            step = jax.vmap(step, in_axes=(0, 0, 0, 0, None, None))
        return jax.jit(step, donate_argnums=(1,))

    def train(self, n_steps: int, hp, state, key, jd, X, Y):
        """``n_steps`` compiled steps, dispatched from Python (asynchronously; nothing syncs).

        Not a ``fori_loop``/``scan``: XLA:CPU runs convolutions inside a rolled loop about 5x
        slower than the same step called from Python (measured on MNIST_CNN), and the
        per-call dispatch is cheap next to a step.
        """
        if self._train is None:
            self._train = self._step_fn()
        metrics = None
        for _ in range(n_steps):
            state, key, metrics = self._train(hp, state, key, jd, X, Y)
        return state, key, metrics

    def init(self, keys, hp):
        if self._init is None:
            fn = self.alg.init
            self._init = jax.jit(jax.vmap(fn) if self.batched else fn)
        return self._init(keys, hp)

    def evaluate(self, state, jd, X, Y, group_size: int):
        if self._eval is None:
            chunk = max(32, self.eval_batch // group_size)

            def ev(state, jd, X, Y):
                e, n = Y.shape
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


def run_group(cfg: SweepConfig, data: D.EnvDataset, dev: DeviceData, jobs: list[Job], batched: bool,
              runner_cache: dict | None = None) -> list[dict]:
    """Train ``jobs`` (one group) and return their DomainBed-style records."""
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
    records = []
    for hp, jd, init_key, train_key, group_jobs in groups:
        state = runner.init(init_key, hp)
        step = -1
        for n in checkpoint_chunks(cfg.steps, cfg.checkpoint_freq):
            state, train_key, metrics = runner.train(n, hp, state, train_key, jd, dev.X, dev.Y)
            step += n
            in_acc, out_acc = runner.evaluate(state, jd, dev.X, dev.Y, len(group_jobs))
            in_acc, out_acc, metrics = jax.device_get((in_acc, out_acc, metrics))
            for g, job in enumerate(group_jobs):
                pick = (lambda a: a[g]) if batched else (lambda a: a)
                rec = {"args": job.args(), "step": step}
                for e in range(data.num_envs):
                    rec[f"env{e}_in_acc"] = float(pick(in_acc)[e])
                    rec[f"env{e}_out_acc"] = float(pick(out_acc)[e])
                for k, v in metrics.items():
                    rec[k] = float(pick(v))
                records.append(rec)
    return records


def use_vmap(cfg: SweepConfig, data: D.EnvDataset) -> bool:
    """``cfg.vmap``, or (None) the measured choice: vmap on GPU/TPU, and on CPU only for MLP
    featurisers - XLA:CPU runs a vmapped convolution (a grouped conv) about 2x slower than the
    same jobs one by one (benchmarks/bench_dg.py), while vmapped MLPs are 1.7-4x faster."""
    if cfg.vmap is not None:
        return cfg.vmap
    return jax.default_backend() != "cpu" or net_spec(cfg, data).kind == "mlp"


def sweep(cfg: SweepConfig, run_dir: str | pathlib.Path | None = None, log: Callable[[str], None] = print) -> pathlib.Path:
    """Run (or resume) the sweep described by ``cfg``; returns the run directory."""
    run_dir = pathlib.Path(run_dir or cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(to_json(cfg))
    data = D.get(cfg.dataset.name, cfg.dataset.seed, **cfg.dataset.kwargs)
    (run_dir / "envs.json").write_text(json.dumps({cfg.dataset.name: list(data.env_names)}))
    log(f"dataset {data.name}: envs {list(data.env_names)} sizes {data.sizes()} shape {data.input_shape}")
    results = run_dir / "results.jsonl"
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add(Job(r["args"]["dataset"], r["args"]["algorithm"], tuple(r["args"]["test_envs"]),
                         r["args"]["hparams_seed"], r["args"]["trial_seed"], tuple(sorted(r["args"]["hparams"].items()))).id)
    jobs = [j for j in make_jobs(cfg, data.num_envs) if j.id not in done]
    batched = use_vmap(cfg, data)
    groups = make_groups(jobs, cfg.max_group, batched)
    log(f"{len(jobs)} jobs to run ({len(done)} done) in {len(groups)} group(s); vmap={batched}")
    dev = DeviceData(data)
    cache: dict = {}
    t_all = time.perf_counter()
    for gi, group in enumerate(groups):
        t0 = time.perf_counter()
        records = run_group(cfg, data, dev, group, batched, cache)
        dt = time.perf_counter() - t0
        with results.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        with (run_dir / "groups.jsonl").open("a") as f:
            f.write(json.dumps({"algorithm": group[0].algorithm, "jobs": len(group), "seconds": dt}) + "\n")
        last = [r for r in records if r["step"] == cfg.steps - 1]
        mean_acc = np.mean([r[f"env{r['args']['test_envs'][0]}_in_acc"] for r in last]) if last else math.nan
        log(f"[{gi + 1}/{len(groups)}] {group[0].algorithm} x{len(group)} jobs: {dt:.1f}s, "
            f"mean final test-env acc {100 * mean_acc:.1f}")
    log(f"sweep finished in {time.perf_counter() - t_all:.1f}s -> {results}")
    return run_dir
