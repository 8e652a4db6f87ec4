"""Compiled train / eval functions of one group shape (vmapped over its jobs) and the
device-resident env data they sample minibatches from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg import test_time
from mixjax.dg import transforms as T
from mixjax.dg import datasets as D
from mixjax.dg.jobs import RNG_IMPL, Job, split_env
from mixjax.dg.networks import training


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
        train_envs = np.asarray([i for i in range(e) if i not in job.test_envs], np.int32)
        extra = {}
        matrix = test_time.metadata_matrix(self.env_meta)
        if matrix is not None:   # the training envs' metadata (D3G's relations), rows as in xs
            extra["train_env_meta"] = matrix[train_envs]
        return {
            **extra,
            "train_envs": train_envs,
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
        Y = jd.get("y", Y)   # the job's own labels under the label-noise protocol (label_noise.py)
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
        # keys travel as raw key data (uint32[..., 2]) so the run engine can checkpoint them
        def step(hp, state, kd, jd, X, Y):
            key = jax.random.wrap_key_data(kd, impl=RNG_IMPL)
            key, kb, ku = jax.random.split(key, 3)
            xs, ys = self._sample(kb, jd, X, Y)
            if self.alg.needs_train_env_metadata:
                hp = {**hp, "train_env_meta": jd["train_env_meta"]}
            state, metrics = self._update(hp, state, xs, ys, ku)
            return state, jax.random.key_data(key), metrics

        if self.batched:
            step = jax.vmap(step, in_axes=(0, 0, 0, 0, None, None))
        return jax.jit(step, donate_argnums=(1,))

    def _fed_step_fn(self):
        """The step on host-made minibatches (uint8 images, normalised here, on the device)."""
        def step(hp, state, kd, xs, ys):
            key = jax.random.wrap_key_data(kd, impl=RNG_IMPL)
            key, _, ku = jax.random.split(key, 3)  # the same key stream as the on-device sampler's
            state, metrics = self._update(hp, state, T.normalize(xs), ys, ku)
            return state, jax.random.key_data(key), metrics

        if self.batched:
            step = jax.vmap(step)
        return jax.jit(step, donate_argnums=(1,))

    def train_fed(self, batches, hp, state, key):
        """One compiled step per host minibatch ``(x uint8[(G,) K, b, s, s, 3], y int32[(G,) K, b])``."""
        if self._train_fed is None:
            self._train_fed = self._fed_step_fn()
        total, n, kd = None, 0, jax.random.key_data(key)
        for x, y in batches:
            state, kd, metrics = self.step_fed(hp, state, kd, x, y)
            total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
            n += 1
        return state, jax.random.wrap_key_data(kd, impl=RNG_IMPL), jax.tree.map(lambda v: v / n, total)

    def step_fed(self, hp, state, kd, x, y):
        """One compiled step on a host minibatch; ``kd``: the key's raw data."""
        if self._train_fed is None:
            self._train_fed = self._fed_step_fn()
        return self._train_fed(hp, state, kd, x, y)

    def step(self, hp, state, kd, jd, X, Y):
        """One compiled step sampling its minibatch on the device; ``kd``: the key's raw data."""
        if self._train is None:
            self._train = self._step_fn()
        return self._train(hp, state, kd, jd, X, Y)

    def train(self, n_steps: int, hp, state, key, jd, X, Y):
        """``n_steps`` compiled steps, dispatched from Python (asynchronously; nothing syncs).

        Not a ``fori_loop``/``scan``: XLA:CPU runs convolutions inside a rolled loop about 5x
        slower than the same step called from Python (measured on MNIST_CNN), and the
        per-call dispatch is cheap next to a step.
        """
        if self._train is None:
            self._train = self._step_fn()
        total, kd = None, jax.random.key_data(key)
        for _ in range(n_steps):
            state, kd, metrics = self._train(hp, state, kd, jd, X, Y)
            total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
        # DomainBed records the mean of each step value over the checkpoint interval
        return state, jax.random.wrap_key_data(kd, impl=RNG_IMPL), jax.tree.map(lambda v: v / n_steps, total)

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
                Y = jd.get("y", Y)   # label noise: the job's labels (its test envs' are clean)
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
