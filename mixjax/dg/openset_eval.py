"""The open-set scores of a sweep's records (``dataset.open_set_unknown``, :mod:`mixjax.dg.openset`):
at every record, each job's test envs are scored on the device - the closed-set prediction and
the known-ness score (:func:`mixjax.dg.openset.known_score`) of the env's known rows and of its
unknown rows - and :func:`mixjax.dg.openset.open_set_metrics` adds ``env{e}_closed_acc``,
``env{e}_auroc`` and ``env{e}_oscr`` to the job's record (known rows: the env's in-split, the
rows of DomainBed's test accuracy; unknown rows: all of the env's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import openset


def _padded(arrays, shape) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), n, *shape), np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, np.asarray([len(a) for a in arrays], np.int32)


class OpenSetEval:
    """The unknown rows of every env on the device (``U f32[E, Nu, ...]``) and the scoring of a
    group's test envs; one compiled scorer per group runner."""

    def __init__(self, split: openset.OpenSetSplit, eval_batch: int):
        data = split.known
        self.U, self.u_len = _padded(split.unknown_x, data.input_shape)
        self.U = jnp.asarray(self.U)
        y, _ = _padded([yi.astype(np.float32) for _, yi in data.envs], ())
        self.Y = y.astype(np.int32)   # host labels of the known rows, padded like DeviceData.Y
        self.eval_batch = eval_batch
        self._fns: dict[int, tuple[object, object]] = {}

    def _scorer(self, runner, group_size: int):
        hit = self._fns.get(id(runner))
        if hit is not None and hit[0] is runner:
            return hit[1]
        alg = runner.alg
        chunk = max(32, self.eval_batch // group_size)

        def rows(state, x):   # x [n, ...] -> (pred i32[n], score f32[n]) in chunks
            n = x.shape[0]
            pad = (-n) % chunk
            x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
            out = jax.lax.map(lambda xb: openset.known_score(alg, state, xb), x.reshape(-1, chunk, *x.shape[1:]))
            return tuple(a.reshape(-1)[:n] for a in out)

        def fn(state, tes, X, U):   # tes i32[T]: the job's test envs
            pred, score, msp = jax.vmap(lambda te: rows(state, X[te]))(tes)
            _, score_u, msp_u = jax.vmap(lambda te: rows(state, U[te]))(tes)
            return pred, score, msp, score_u, msp_u

        if runner.batched:
            fn = jax.vmap(fn, in_axes=(0, 0, None, None))
        fn = jax.jit(fn)
        self._fns[id(runner)] = (runner, fn)
        return fn

    def add_metrics(self, runner, state, jd, X, jobs, batched: bool, records: dict) -> None:
        """Adds the open-set metrics of each job's test envs to its last record in ``records``."""
        fn = self._scorer(runner, len(jobs))
        tes = np.asarray([j.test_envs for j in jobs], np.int32)
        pred, score, msp, score_u, msp_u = jax.device_get(fn(state, tes if batched else tes[0], X, self.U))
        in_mask = np.asarray(jax.device_get(jd["in_mask"]))
        own = openset.has_own_score(runner.alg)
        for g, job in enumerate(jobs):
            pick = (lambda a: a[g]) if batched else (lambda a: a)  # noqa: E731
            mask = pick(in_mask)
            for t, te in enumerate(job.test_envs):
                m, n_u = mask[te], self.u_len[te]
                got = openset.open_set_metrics(pick(pred)[t][m], self.Y[te][m], pick(score)[t][m],
                                               pick(score_u)[t][:n_u])
                if own:   # the same model under max softmax probability (MEDIC's OSCR_C)
                    base = openset.open_set_metrics(pick(pred)[t][m], self.Y[te][m], pick(msp)[t][m],
                                                    pick(msp_u)[t][:n_u])
                    got.update({f"{k}_msp": base[k] for k in ("auroc", "oscr")})
                records[job][-1].update({openset.record_key(te, k): v for k, v in got.items()})
