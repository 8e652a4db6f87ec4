"""CIL (mixjax.dg.algorithms.cil) against its min-max restated in numpy: CE + lambda x (best
ridge error of the continuous environment index from the features alone - best error from the
features and the label), the inner problems solved independently in numpy, and the refusal of
a dataset without environment metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.config import ConfigError
from mixjax.dg import test_time
from mixjax.dg.env_dataset import EnvDataset

from dg_fakes import build_tiny, tiny_batches

RHO, LAM = 0.3, 0.6


def np_ridge_error(a, t, rho):
    """min_w mean (a w - t)^2 + rho |w|^2 (rows of one group), by the normal equations."""
    w = np.linalg.solve(a.T @ a / len(t) + rho * np.eye(a.shape[1]), a.T @ t / len(t))
    return ((a @ w - t) ** 2).mean() + rho * w @ w, w


@pytest.fixture(scope="module")
def cil():
    alg, hp = build_tiny("cil", cil_lambda=LAM, cil_ridge=RHO)
    hp = {**hp, "train_env_meta": jnp.asarray([[10.0], [40.0]], jnp.float32)}
    state = alg.init(jax.random.key(0), hp)
    xs, ys = tiny_batches(0)
    return alg, hp, state, xs, ys


def np_terms(alg, params, xs, ys):
    z = np.asarray(jax.jit(alg.features)(params, xs.reshape(8, 5)), np.float64)
    y = np.asarray(ys).reshape(8)
    t = np.repeat([-0.5, 0.5], 4)          # angles 10 / 40: centred (25), divided by the range (30)
    a = np.concatenate([z, np.ones((8, 1))], 1)
    r_h, _ = np_ridge_error(a, t, RHO)
    r_g = sum((y == c).mean() * np_ridge_error(a[y == c], t[y == c], RHO)[0] for c in np.unique(y))
    logits = np.asarray(jax.jit(alg.classify)(params, jnp.asarray(z, jnp.float32)), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(8), y].mean(), r_h, r_g, a, y, t


def test_loss_is_ce_plus_lambda_times_the_min_max_gap_of_the_index_regressors(cil):
    alg, hp, state, xs, ys = cil
    assert alg.needs_train_env_metadata
    loss, m = jax.jit(alg.loss)(state["params"], hp, state, xs, ys, jax.random.key(0))
    ce, r_h, r_g, a, y, t = np_terms(alg, state["params"], xs, ys)
    np.testing.assert_allclose(float(m["ce_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(m["reg_h_loss"]), r_h, rtol=1e-4)
    np.testing.assert_allclose(float(m["reg_g_loss"]), r_g, rtol=1e-4)
    np.testing.assert_allclose(float(loss), ce + LAM * (r_h - r_g), rtol=1e-5)
    # the label-conditioned regressor can copy h in every class: the gap is >= 0, and h's
    # solution used per class is no better than the classes' own (the max over g)
    _, v = np_ridge_error(a, t, RHO)
    as_h = sum((y == c).mean() * (((a[y == c] @ v - t[y == c]) ** 2).mean() + RHO * v @ v) for c in np.unique(y))
    np.testing.assert_allclose(as_h, r_h, rtol=1e-9)
    assert 0 < r_h - r_g and r_g < as_h


def test_update_descends_the_penalised_loss(cil):
    alg, hp, state, xs, ys = cil
    new, metrics = jax.jit(alg.update)(hp, jax.tree.map(jnp.copy, state), xs, ys, jax.random.key(1))
    assert int(new["step"]) == 1 and np.isfinite(float(metrics["penalty"]))
    before = np_terms(alg, state["params"], xs, ys)
    after = np_terms(alg, new["params"], xs, ys)
    assert after[0] + LAM * (after[1] - after[2]) < before[0] + LAM * (before[1] - before[2])


def test_cil_on_a_dataset_without_metadata_is_refused():
    """One ConfigError line naming cil, the missing metadata and the dataset (the sweep prints it
    and exits 2 before anything is built, as for d3g)."""
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ConfigError) as err:
        test_time.check_requirements(["erm", "cil"], EnvDataset("plain", ("a", "b"), ((x, y), (x, y)), 2))
    msg = str(err.value)
    assert "\n" not in msg and "'cil'" in msg and "metadata" in msg and "'plain'" in msg
    with_meta = EnvDataset("m", ("a", "b"), ((x, y), (x, y)), 2, env_metadata=({"angle": 0.0}, {"angle": 15.0}))
    test_time.check_requirements(["cil"], with_meta)


def test_the_job_vmapped_step_factorises_once_and_matches_each_job_alone(cil):
    """Under the sweep's job vmap the CIL gradient is each job's own gradient, and the compiled
    program holds ONE batched LU factorisation (h and the C regressors g_y solved together).
    With jaxlib 0.10 two independent batched LAPACK calls of one XLA:CPU program can each
    take a thread of the 2-thread intra-op pool and wait for sub-tasks queued on it: the
    earlier two-solve form deadlocked a 6-job RotatedMNIST sweep on 2 cores (gdb: both pool
    threads in ``LuDecomposition`` -> ``ParallelBatchMap`` -> ``BlockingCounter::Wait``)."""
    alg, hp, state, xs, ys = cil
    grad = jax.grad(lambda p, x, y: alg.loss(p, hp, state, x, y, jax.random.key(0))[0])
    keys = jax.random.split(jax.random.key(1), 3)
    params = jax.vmap(lambda k: alg.init(k, hp)["params"])(keys)
    xb = jnp.stack([xs, xs * 0.5, -xs])
    batched = jax.jit(jax.vmap(grad))
    out = batched(params, xb, jnp.stack([ys] * 3))
    for j in range(3):
        alone = grad(jax.tree.map(lambda a: a[j], params), xb[j], ys)
        jax.tree.map(lambda b, a: np.testing.assert_allclose(b[j], a, rtol=2e-4, atol=1e-6), out, alone)
    hlo = batched.lower(params, xb, jnp.stack([ys] * 3)).compile().as_text()
    assert hlo.count('custom_call_target="lapack_sgetrf_ffi"') == 1


def test_a_sweep_groups_cil_jobs_like_every_algorithm():
    """CIL's jobs train in job-vmapped groups (they ran one by one while the deadlock above
    was unexplained)."""
    from mixjax.dg import sweep as S
    from mixjax.dg.config import SweepConfig

    mixed = SweepConfig(algorithms=("erm", "cil"), n_hparams=1, n_trials=2, test_envs="single")
    groups = S.make_groups(S.make_jobs(mixed, 2), 64, True)
    assert {a: sorted(len(g) for g in groups if g[0].algorithm == a) for a in ("erm", "cil")} == \
        {"erm": [4], "cil": [4]}
