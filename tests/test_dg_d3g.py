"""D3G (mixjax.dg.algorithms.d3g) against its rule restated in numpy: the supervised + relation
consistency loss over per-env heads, the test-time relation weighting of the heads from the
environments' metadata, the metadata plumbing (job arrays, test-time meta) and the refusal of
a dataset without metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.config import ConfigError
from mixjax.dg import test_time
from mixjax.dg.env_dataset import EnvDataset
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

NET = NetSpec(input_shape=(5,), num_classes=3, featurizer="mlp", mlp_width=8)
META = np.asarray([[0.0, 1.0], [15.0, 1.0], [45.0, 2.0]], np.float32)   # K=3 envs, M=2 fields


def np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def np_relations(m_a, m_b, train, tau):
    s = train.max(0) - train.min(0)
    s = np.where(s > 0, s, 1.0)
    d = (m_a[:, None, :] - m_b[None, :, :]) / s
    return np.exp(-(d ** 2).sum(-1) / (2 * tau ** 2))


@pytest.fixture(scope="module")
def d3g():
    alg, hp = build_algorithm("d3g", NET, num_envs=3, batch_size=4, d3g_lambda=0.7, d3g_tau=0.4)
    state = alg.init(jax.random.key(0), hp)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 3, (3, 4)), jnp.int32)
    return alg, {**hp, "train_env_meta": jnp.asarray(META)}, state, xs, ys


def np_head_logp(alg, state, x):
    z = np.asarray(jax.jit(alg.features)(state["params"], x), np.float64)
    k, b = np.asarray(state["heads"]["kernel"], np.float64), np.asarray(state["heads"]["bias"], np.float64)
    return np_log_softmax(np.einsum("nd,edc->enc", z, k) + b[:, None, :])   # [E, N, C]


def test_loss_is_own_head_ce_plus_relation_weighted_mixture_of_the_other_heads(d3g):
    alg, hp, state, xs, ys = d3g
    assert alg.num_envs == 3 and alg.needs_train_env_metadata
    loss, m = jax.jit(alg.objective)((state["params"], state["heads"]), hp, xs, ys)
    a = np_relations(META, META, META, 0.4)
    y = np.asarray(ys)
    sup, cons = 0.0, 0.0
    for e in range(3):
        logp = np_head_logp(alg, state, xs[e])                      # heads on env e's batch
        sup += -logp[e, np.arange(4), y[e]].mean() / 3
        others = [o for o in range(3) if o != e]
        w = a[e, others] / a[e, others].sum()
        p = sum(wo * np.exp(logp[o]) for wo, o in zip(w, others))   # mixture of the other heads
        cons += -np.log(p[np.arange(4), y[e]]).mean() / 3
    np.testing.assert_allclose(float(m["sup_loss"]), sup, rtol=1e-5)
    np.testing.assert_allclose(float(m["consistency_loss"]), cons, rtol=1e-5)
    np.testing.assert_allclose(float(loss), sup + 0.7 * cons, rtol=1e-5)
    new, metrics = jax.jit(alg.update)(hp, state, xs, ys, jax.random.key(1))
    assert int(new["step"]) == 1 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(new["heads"]["kernel"], state["heads"]["kernel"])


def test_test_time_weights_heads_by_relation_to_the_evaluated_env(d3g):
    alg, _, state, xs, _ = d3g
    x = xs.reshape(12, 5)
    logp = np_head_logp(alg, state, x)
    for env_meta in (META[0], np.asarray([30.0, 1.5], np.float32), np.asarray([900.0, 9.0], np.float32)):
        tt = jax.jit(alg.test_time_init)(state, {"env_meta": jnp.asarray(env_meta),
                                                 "train_env_meta": jnp.asarray(META)})
        logits, tt2 = jax.jit(alg.predict_with_state)(state, tt, x, jnp.ones(12, bool))
        a = np_relations(env_meta[None], META, META, 0.4)[0]
        w = a / a.sum() if a.sum() > 0 else None
        if w is None:    # every relation underflows in f64 too: the nearest env's head alone
            w = np.eye(3)[np.argmin(((env_meta - META) / np.asarray([45.0, 1.0])) ** 2 @ np.ones(2))]
        want = np.log(np.einsum("e,enc->nc", w, np.exp(logp)))
        np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(tt2["w"]), w, rtol=1e-4, atol=1e-6)
    # plain predict (the "before test time" accuracies) is the uniform average of the heads
    want = np.log(np.exp(logp).mean(0))
    np.testing.assert_allclose(np.asarray(jax.jit(alg.predict)(state, x)), want, rtol=1e-4, atol=1e-5)
    assert test_time.uses_hook(alg)


def test_metadata_reaches_training_and_test_time(d3g):
    """Job arrays carry the training envs' metadata rows (in batch order); the compiled group
    step and the per-env test-time evaluation read them, deterministically."""
    from mixjax.dg.group_runner import DeviceData, GroupRunner
    from mixjax.dg.jobs import Job

    alg, hp, state, _, _ = d3g
    rng = np.random.default_rng(1)
    envs = tuple((rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 3, 6).astype(np.int32))
                 for _ in range(4))
    meta = ({"angle": 0.0, "b": 1.0}, {"angle": 15.0, "b": 1.0}, {"angle": 30.0, "b": 0.0},
            {"angle": 45.0, "b": 2.0})
    data = EnvDataset("m", ("a", "b", "c", "d"), envs, 3, env_metadata=meta)
    dev = DeviceData(data)
    job = Job(dataset="m", algorithm="d3g", test_envs=(2,), hparams_seed=0, trial_seed=0, hparams=())
    jd = dev.job_arrays(job, 0.5)
    np.testing.assert_array_equal(jd["train_env_meta"], [[0, 1], [15, 1], [45, 2]])
    jd = {k: jnp.asarray(v) for k, v in jd.items()}
    runner = GroupRunner(alg, 4, 8, batched=False)
    state = jax.tree.map(jnp.copy, state)   # the step donates its state
    hp0 = {k: v for k, v in hp.items() if k != "train_env_meta"}
    st, _, metrics = runner.step(hp0, state, jax.random.key_data(jax.random.key(2)), jd, dev.X, dev.Y)
    assert np.isfinite(float(metrics["consistency_loss"])) and float(metrics["consistency_loss"]) > 0
    in_acc, out_acc, cost = test_time.evaluate(runner, st, jd, dev, 1)
    in2, out2, _ = test_time.evaluate(runner, st, jd, dev, 1)
    np.testing.assert_array_equal(in_acc, in2)
    # env 2 (the test env, angle 30, b 0) by the numpy relation weights to envs 0, 1, 3
    train = np.asarray([[0, 1], [15, 1], [45, 2]], np.float32)
    a = np_relations(np.asarray([[30.0, 0.0]]), train, train, 0.4)[0]
    x2, y2 = envs[2]
    pred = np.einsum("e,enc->nc", a / a.sum(), np.exp(np_head_logp(alg, st, jnp.asarray(x2)))).argmax(1)
    correct = pred == y2
    m_in, m_out = np.asarray(jd["in_mask"][2])[:6], np.asarray(jd["out_mask"][2])[:6]
    np.testing.assert_allclose(float(in_acc[2]), correct[m_in].mean())
    np.testing.assert_allclose(float(out_acc[2]), correct[m_out].mean())


def test_d3g_on_a_dataset_without_metadata_is_refused():
    """One ConfigError line naming the algorithm, the missing metadata and the dataset: the sweep
    prints it and exits 2 before anything is written (the path test_dg_adanpc checks end to end)."""
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ConfigError) as err:
        test_time.check_requirements(["erm", "d3g"], EnvDataset("plain", ("a", "b"), ((x, y), (x, y)), 2))
    msg = str(err.value)
    assert "\n" not in msg and "'d3g'" in msg and "metadata" in msg and "'plain'" in msg
    with_meta = EnvDataset("m", ("a", "b"), ((x, y), (x, y)), 2, env_metadata=({"angle": 0.0}, {"angle": 15.0}))
    test_time.check_requirements(["d3g"], with_meta)   # provided: no error
