"""Test-time procedures in the DG evaluation: memory, statistics or adaptation per environment.

An algorithm that overrides ``Algorithm.predict_with_state`` (``mixjax.dg.algorithms.base``)
is evaluated environment by environment: for every environment e of the dataset (training
and test environments alike; ``meta["is_test"]`` tells them apart)

    tt_0 = alg.test_time_init(state, meta_e)
    (logits_c, tt_{c+1}) = alg.predict_with_state(state, tt_c, x_c, valid_c),  c = 0, 1, ...

over the environment's examples in index order, in chunks of ``chunk`` rows (``valid_c``
marks the padding of the last chunk), and the accuracies of the in/out splits are read from
``argmax logits`` as for plain prediction. Deterministic: a fixed order, no randomness, and a
fresh ``tt_0`` per environment. ``meta_e`` = ``{"env": e, "is_test": e not in the job's
training envs, "size": N_e, **EnvDataset.env_metadata[e]}`` (scalars), plus, on a dataset with
metadata, ``env_meta`` f32[M] (env e's fields, sorted by name) and ``train_env_meta`` f32[K, M]
(the job's training envs', in the order of the training batches).

Its cost is reported in every record: ``test_time_s`` (wall seconds of the evaluation per
job) and, when the test-time state has a ``cost`` entry, ``env{e}_tt_cost`` (the algorithm's
own count: adaptation steps, memory writes, ...). Every record of such an algorithm also
holds ``env{e}_in_acc_before_tt`` / ``env{e}_out_acc_before_tt``: the same model's plain
``predict`` (no test-time state), so the effect of the test-time step is read off each record
and off ``mixjax dg table``'s "test-time step" table. An algorithm that keeps the default
``predict_with_state`` is evaluated by the batched plain ``predict`` (``GroupRunner.evaluate``),
unchanged. docs/extending.md section 7 is a worked example (a kNN memory classifier).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.config import ConfigError
from mixjax.dg.algorithms.base import Algorithm

BEFORE = "_before_tt"   # suffix of the plain-predict accuracies in a test-time record


def uses_hook(alg: Algorithm | type[Algorithm]) -> bool:
    """Whether ``alg`` (an algorithm or its class) defines its own test-time procedure."""
    cls = alg if isinstance(alg, type) else type(alg)
    return cls.predict_with_state is not Algorithm.predict_with_state


def check_requirements(algorithms, data, net=None) -> None:
    """``ConfigError`` naming the algorithm and the missing per-environment metadata when an
    algorithm of the sweep needs numbers (``Algorithm.needs_env_metadata``) that ``data``
    does not carry, or a convolutional feature map (``Algorithm.needs_feature_map``) that the
    network ``net`` (a ``NetSpec``; its featuriser as resolved for ``data``) lacks; called once
    the dataset is built, before anything is compiled."""
    from mixjax.dg import algorithms as A

    have = set((data.env_metadata or [{}])[0])
    for name in algorithms:
        if net is not None and A.get(name).needs_feature_map and net.kind == "mlp":
            raise ConfigError(
                f"config key 'model.featurizer': algorithm {name!r} needs a convolutional feature map; "
                f"the featuriser is an MLP ({net.featurizer!r} on dataset {data.name!r}, input shape "
                f"{tuple(data.input_shape)}) - use cnn, resnet, resnet18 or resnet50")
        if A.get(name).needs_train_env_metadata and not have:
            raise ConfigError(
                f"config key 'algorithms': algorithm {name!r} needs per-environment metadata (any "
                f"numbers per environment, e.g. rotated_mnist's angle); dataset {data.name!r} has none "
                "- choose a dataset that provides it")
        missing = [k for k in A.get(name).needs_env_metadata if k not in have]
        if missing:
            raise ConfigError(
                f"config key 'algorithms': algorithm {name!r} needs per-environment metadata "
                f"{missing} (e.g. continuous environments' numbers); dataset {data.name!r} has "
                + (f"only {sorted(have)}" if have else "none") + " - choose a dataset that provides it")


def env_metadata(data) -> dict[str, np.ndarray]:
    """``{name: f32[E]}``: the dataset's per-environment numbers plus ``size`` (i32[E])."""
    out = {"size": np.asarray(data.sizes(), np.int32)}
    meta = getattr(data, "env_metadata", None)
    if meta:
        names = sorted(meta[0])
        if any(sorted(m) != names for m in meta):
            raise ValueError(f"{data.name}: env_metadata must name the same fields for every env")
        out.update({k: np.asarray([float(m[k]) for m in meta], np.float32) for k in names})
    return out


def metadata_matrix(meta: dict) -> np.ndarray | None:
    """f32[E, M]: the per-environment numbers of :func:`env_metadata` (fields sorted by name,
    ``size`` left out), or None when the dataset has none."""
    names = sorted(k for k in meta if k != "size")
    return np.stack([np.asarray(meta[k], np.float32) for k in names], 1) if names else None


def _evaluate_fn(alg: Algorithm, meta: dict, chunk: int, batched: bool):
    matrix = metadata_matrix(meta)

    def ev(state, jd, X, Y):
        Y = jd.get("y", Y)   # label noise: the job's labels (its test envs' are clean)
        e, n = Y.shape
        valid_rows = jd["in_mask"] | jd["out_mask"]
        is_test = ~jnp.any(jnp.arange(e)[:, None] == jd["train_envs"][None, :], axis=1)
        pad = (-n) % chunk

        def one_env(i):
            me = {"env": i, "is_test": is_test[i], **{k: jnp.asarray(v)[i] for k, v in meta.items()}}
            if matrix is not None:   # the env's metadata vector and the job's training envs' rows
                me["env_meta"] = jnp.asarray(matrix)[i]
                me["train_env_meta"] = jnp.asarray(matrix)[jd["train_envs"]]
            tt = alg.test_time_init(state, me)
            x = jnp.concatenate([X[i], jnp.zeros((pad, *X.shape[2:]), X.dtype)])
            v = jnp.concatenate([valid_rows[i], jnp.zeros((pad,), bool)])
            xs = x.reshape(-1, chunk, *X.shape[2:])
            vs = v.reshape(-1, chunk)

            def body(tt, xv):
                logits, tt = alg.predict_with_state(state, tt, *xv)
                return tt, jnp.argmax(logits, -1)

            tt, preds = jax.lax.scan(body, tt, (xs, vs))
            cost = jnp.asarray(tt.get("cost", jnp.nan), jnp.float32) if isinstance(tt, dict) \
                else jnp.float32(jnp.nan)
            return preds.reshape(-1)[:n], cost

        preds, cost = jax.lax.map(one_env, jnp.arange(e))   # one environment after another
        correct = (preds == Y).astype(jnp.float32)
        acc = lambda m: (correct * m).sum(1) / jnp.maximum(m.sum(1), 1)  # noqa: E731
        return acc(jd["in_mask"]), acc(jd["out_mask"]), cost

    if batched:
        ev = jax.vmap(ev, in_axes=(0, 0, None, None))
    return jax.jit(ev)


def evaluate(runner, state, jd, dev, group_size: int, X=None):
    """``(in_acc, out_acc, cost)`` like ``GroupRunner.evaluate`` plus the cost: ``{"test_time_s":
    seconds per job, "tt_cost": f32[(G,) E] (NaN where the algorithm reports none)}``. ``X``:
    other inputs of ``dev.X``'s shape (a crafted-shift copy of every env; default ``dev.X``)."""
    X = dev.X if X is None else X
    # One executable per argument signature: a runner serves groups of different sizes (the
    # last group of a sweep is often smaller), and an AOT executable does not retrace.
    signature = (group_size, tuple((a.shape, a.dtype) for a in jax.tree.leaves((state, jd, X, dev.Y))))
    cache = runner.__dict__.setdefault("_test_time_evals", {})
    fn = cache.get(signature)
    if fn is None:   # compiled here, so that test_time_s times the procedure, not XLA
        fn = _evaluate_fn(runner.alg, dev.env_meta, max(32, runner.eval_batch // group_size),
                          runner.batched).lower(state, jd, X, dev.Y).compile()
        cache[signature] = fn
    t0 = time.perf_counter()
    in_acc, out_acc, cost = jax.block_until_ready(fn(state, jd, X, dev.Y))
    return in_acc, out_acc, {"test_time_s": (time.perf_counter() - t0) / group_size,
                             "tt_cost": cost}
