"""AdaNPC (mixjax.dg.algorithms.adanpc) against its rule restated in numpy: the kNN scores
and training loss (yfzhang114/AdaNPC knn.py MomentumQueue.forward, algorithms.py KNN.update),
the training ring buffer, and the test-time memory extension (adapt_algorithms.py AdaNPC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.dg import algorithms as A
from mixjax.dg import hparams as H
from mixjax.dg import test_time
from mixjax.dg.networks import NetSpec

C = 3


def np_unit(z):
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def np_scores(z, mem, lab, k, tau):
    sim = np_unit(z) @ mem.T
    out = np.zeros((len(z), C))
    for i in range(len(z)):
        idx = np.argsort(-sim[i], kind="stable")[:k]
        w = np.exp(sim[i, idx] / tau - np.max(sim[i, idx] / tau))
        w /= w.sum()
        for j, wj in zip(idx, w):
            out[i, lab[j]] += wj
    return np.minimum(out + 1e-5, 1.0)


@pytest.fixture(scope="module")
def setup():
    cls = A.get("adanpc")
    hp = H.draw(cls.hparam_space(True), 0, 0)
    assert (hp["queue_size"], hp["knn_k"], hp["adanpc_beta"]) == (1000, 10, 0.1)   # the code's defaults
    hp.update(queue_size=6, knn_k=3, batch_size=4, adanpc_beta=0.45)
    static, traced = H.split_static(hp)
    alg = cls(net=NetSpec(input_shape=(5,), num_classes=C, featurizer="mlp", mlp_width=8), num_envs=2,
              static=static)
    hpj = {k: jnp.float32(v) for k, v in traced.items()}
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, C, (2, 4)), jnp.int32)
    s0 = alg.init(jax.random.key(0), hpj)
    s0 = {**s0, "step": jnp.int32(700)}
    s1, m = jax.jit(alg.update)(hpj, s0, xs, ys, jax.random.key(1))
    return alg, hpj, xs, ys, s0, s1, m


def test_training_loss_and_ring_buffer(setup):
    alg, hpj, xs, ys, s0, s1, m = setup
    x, y = np.asarray(xs).reshape(8, 5), np.asarray(ys).reshape(8)
    z = np.asarray(jax.jit(alg.features)(s0["params"], jnp.asarray(x)))
    tau = 1.0 - 0.9 * 700 / 5000                       # the code's schedule at step 700
    p = np_scores(z, np.asarray(s0["mem_z"]), np.asarray(s0["mem_y"]), 3, tau)
    np.testing.assert_allclose(float(m["loss"]), -np.mean(np.log(p[np.arange(8), y])), rtol=1e-5)
    # 8 writes into a ring of 6 starting at 0: slots 0..5 get rows 6,7,2,3,4,5
    order = [6, 7, 2, 3, 4, 5]
    np.testing.assert_allclose(np.asarray(s1["mem_z"]), np_unit(z)[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s1["mem_y"]), y[order])
    np.testing.assert_array_equal(np.asarray(s1["mem_x"]), x[order])
    assert int(s1["mem_ptr"]) == 8
    # only the featuriser learns (the code's optimiser holds featurizer.parameters() alone); the
    # initial memory's labels are all 0 (as the code), so the first step has no gradient
    s2, _ = jax.jit(alg.update)(hpj, s1, xs, ys, jax.random.key(2))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), s1["params"], s2["params"])
    assert any(jax.tree.leaves(moved["featurizer"])) and not any(jax.tree.leaves(moved["classifier"]))


def test_test_time_memory_extension_matches_numpy(setup):
    alg, hpj, xs, ys, s0, state, m = setup
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 5)).astype(np.float32)
    feats = lambda a: np.asarray(jax.jit(alg.features)(state["params"], jnp.asarray(a)))  # noqa: E731
    init, step = jax.jit(alg.test_time_init), jax.jit(alg.predict_with_state)
    mem = np_unit(feats(np.asarray(state["mem_x"])))          # re-embedded training ring (all 6 filled)
    lab = np.asarray(state["mem_y"])
    # numpy: predict each chunk of 4 with the memory as it stands, then add the confident rows
    valid = np.ones(12, bool)
    valid[10:] = False                                        # padding of the last chunk
    xp = np.concatenate([x, np.zeros((2, 5), np.float32)])
    want, writes = [], 0
    for c in range(3):
        f = feats(xp[4 * c: 4 * c + 4])
        p = np_scores(f, mem, lab, 3, 0.1)
        want.append(np.log(p))
        e = np.exp(p - p.max(1, keepdims=True))
        conf = (e / e.sum(1, keepdims=True)).max(1)
        add = (conf >= 0.45) & valid[4 * c: 4 * c + 4]
        mem, lab = np.concatenate([mem, np_unit(f)[add]]), np.concatenate([lab, p.argmax(1)[add]])
        writes += int(add.sum())
    assert 0 < writes < 10                                    # the threshold splits the examples
    tt = init(state, {"is_test": jnp.bool_(True)})
    got = []
    for c in range(3):
        logits, tt = step(state, tt, jnp.asarray(xp[4 * c: 4 * c + 4]),
                                            jnp.asarray(valid[4 * c: 4 * c + 4]))
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-4, atol=1e-5)
    assert float(tt["cost"]) == writes
    # a training env (is_test False) is never extended; plain predict is the unextended kNN
    tt = init(state, {"is_test": jnp.bool_(False)})
    _, tt = step(state, tt, jnp.asarray(xp[:4]), jnp.ones(4, bool))
    assert float(tt["cost"]) == 0
    np.testing.assert_allclose(np.asarray(jax.jit(alg.predict)(state, jnp.asarray(x[:4]))), want[0], rtol=1e-4, atol=1e-5)
    assert test_time.uses_hook(alg)


@pytest.mark.slow   # ~11 s on one core, mostly compilation (MIXJAX_SLOW=1)
def test_sweep_runs_adanpc_with_before_after_accuracies(tmp_path, capsys):
    """`mixjax dg sweep` on the tiny config with a test-time algorithm: its records carry the
    test-time cost and the accuracies without the test-time step; the table shows both."""
    import json
    import pathlib

    from mixjax.cli import main

    tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")
    run = tmp_path / "run"
    assert main(["dg", "sweep", tiny, "--run-dir", str(run), "--set", "steps=6", "--set", "checkpoint_freq=5",
                 "--set", "algorithms=[adanpc]", "--set", "test_envs=single", "--set", "n_hparams=1", "--set", "n_trials=1",
                 "--set", "hparam_overrides.queue_size=32"]) == 0
    recs = [json.loads(line) for f in sorted(run.glob("*/results.jsonl")) for line in f.read_text().splitlines()]
    assert len(recs) == 3 * 1 * 2        # 3 test envs x 1 trial x records at steps 0, 5
    for r in recs:
        (te,) = r["args"]["test_envs"]
        assert r["test_time_s"] > 0
        for e in range(3):
            assert 0 <= r[f"env{e}_in_acc_before_tt"] <= 1 and 0 <= r[f"env{e}_out_acc_before_tt"] <= 1
            # beta 0.1 < 1/2 <= every confidence of 2 classes: each test-env example is added
            assert r[f"env{e}_tt_cost"] == (40 if e == te else 0)
        # training envs are not extended, so their accuracy is plain predict's
        assert all(r[f"env{e}_out_acc"] == r[f"env{e}_out_acc_before_tt"] for e in range(3) if e != te)
    md = (run / "results.md").read_text()
    # training-domain and oracle selections x 3 envs (leave-one-out needs the pair runs)
    assert "Test-time step" in md and md.count("| adanpc | env") == 2 * 3


def test_an_algorithm_needing_missing_env_metadata_is_refused(tmp_path, capsys, monkeypatch):
    import pathlib

    from mixjax.cli import main
    from mixjax.dg.algorithms.base import Algorithm
    from mixjax.dg.env_dataset import EnvDataset

    class NeedsAngle(Algorithm):
        name = "needs_angle"
        needs_env_metadata = ("angle",)

    monkeypatch.setitem(A.ALGORITHMS, "needs_angle", NeedsAngle)
    tiny = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")
    run = tmp_path / "run"
    assert main(["dg", "sweep", tiny, "--run-dir", str(run), "--set", "algorithms=[needs_angle]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'needs_angle'" in err[0] and "'angle'" in err[0] and "'synthetic'" in err[0]
    assert not run.exists()                # refused before anything was written
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with_angle = EnvDataset("d", ("a", "b"), ((x, y), (x, y)), 2, env_metadata=({"angle": 0.0}, {"angle": 15.0}))
    test_time.check_requirements(["needs_angle", "erm"], with_angle)   # provided: no error
