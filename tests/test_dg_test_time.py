"""The DG test-time evaluation (mixjax.dg.test_time): per-env order, metadata, determinism."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg import test_time
from mixjax.dg.algorithms.base import Algorithm
from mixjax.dg.networks import NetSpec


class _Counter(Algorithm):
    """Predicts class (number of valid rows seen so far in this env + meta offset) mod C:
    the logits reveal the order, the chunking and the metadata the evaluation used."""

    name = "test_counter"

    def test_time_init(self, state, meta):
        return {"seen": meta["offset"].astype(jnp.int32) + 0 * meta["env"],
                "cost": jnp.zeros(()) + meta["size"]}

    def predict_with_state(self, state, tt, x, valid):
        pos = tt["seen"] + jnp.cumsum(valid) - 1
        logits = jax.nn.one_hot(pos % 3, 3)
        return logits, {**tt, "seen": tt["seen"] + jnp.sum(valid)}


def test_per_environment_order_metadata_and_cost():
    alg = _Counter(net=NetSpec(input_shape=(2,), num_classes=3, featurizer="mlp", mlp_width=4),
                   num_envs=1)
    e, n = 2, 7
    X = jnp.zeros((e, n, 2))
    Y = jnp.asarray(np.tile(np.arange(n) % 3, (e, 1)), jnp.int32)   # label of row i: i % 3
    in_mask = np.ones((e, n), bool)
    in_mask[0, 3] = False                  # not an example: predict_with_state sees valid=False
    jd = {"train_envs": jnp.asarray([0], jnp.int32),
          "in_mask": jnp.asarray(in_mask),
          "out_mask": jnp.asarray(np.zeros((e, n), bool))}
    meta = {"size": np.asarray([7, 7], np.int32), "offset": np.asarray([0.0, 1.0], np.float32)}
    fn = test_time._evaluate_fn(alg, meta, chunk=3, batched=False)
    in_acc, _, cost = fn({}, jd, X, Y)
    # env 0 starts at offset 0: rows 0-2 predicted i % 3 = their label, row 3 is skipped, so
    # rows 4-6 get (i - 1) % 3 (wrong); env 1 starts at offset 1: all wrong
    np.testing.assert_array_equal(np.asarray(in_acc), [0.5, 0.0])
    np.testing.assert_array_equal(np.asarray(cost), [7.0, 7.0])
    again = fn({}, jd, X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves((in_acc, cost)),
                                                    jax.tree.leaves(again[::2])))
    assert test_time.uses_hook(alg) and not test_time.uses_hook(Algorithm)


def test_before_after_accuracies_follow_the_selected_checkpoint():
    """selection carries the plain-predict accuracy of the checkpoint it selects; the report
    prints it next to the test-time one."""
    from mixjax.dg import report, selection

    def rec(hp, step, val, after, before, trial=0):
        return {"args": {"dataset": "d", "algorithm": "tt", "test_envs": [0], "hparams_seed": hp,
                         "trial_seed": trial},
                "step": step, "env0_in_acc": after, "env0_out_acc": 0.0, "env1_in_acc": 0.0,
                "env1_out_acc": val, "env0_in_acc_before_tt": before, "test_time_s": 0.5 + step}

    recs = [rec(0, 0, 0.6, 0.7, 0.5), rec(0, 1, 0.9, 0.8, 0.4), rec(1, 0, 0.7, 0.2, 0.1),
            rec(0, 1, 0.9, 0.6, 0.2, trial=1)]
    best = selection.sweep_acc(recs[:3], "training_domain")
    assert (best["hparams_seed"], best["step"], best["test_acc"], best["test_acc_before"], best["test_time_s"]) \
        == (0, 1, 0.8, 0.4, 1.5)
    rows = report.collect(recs)
    md = report.test_time_markdown(rows)
    assert "| training_domain | d | tt | env0 | 30.0 +/- 7.1 | 70.0 +/- 7.1 | 1.500 |" in md
    assert report.test_time_markdown([{**r, "trial_accs_before": []} for r in rows]) == ""


def test_one_runner_evaluates_groups_of_different_sizes():
    """A sweep's runner serves every group of an algorithm, and its last group is often smaller
    (D3G's RotatedMNIST sweep: 64 jobs, then 8): the compiled evaluation must follow the size."""
    from types import SimpleNamespace

    alg = _Counter(net=NetSpec(input_shape=(2,), num_classes=3, featurizer="mlp", mlp_width=4),
                   num_envs=1)
    e, n = 2, 7
    X = jnp.zeros((e, n, 2))
    Y = jnp.asarray(np.tile(np.arange(n) % 3, (e, 1)), jnp.int32)
    meta = {"size": np.asarray([7, 7], np.int32), "offset": np.asarray([0.0, 1.0], np.float32)}
    runner = SimpleNamespace(alg=alg, eval_batch=96, batched=True)
    dev = SimpleNamespace(env_meta=meta, X=X, Y=Y)

    def group(g):
        jd = {"train_envs": jnp.zeros((g, 1), jnp.int32),
              "in_mask": jnp.ones((g, e, n), bool), "out_mask": jnp.zeros((g, e, n), bool)}
        return {"w": jnp.zeros((g,))}, jd

    for g in (3, 2, 3):
        in_acc, _, cost = test_time.evaluate(runner, *group(g), dev, group_size=g)
        np.testing.assert_array_equal(np.asarray(in_acc), np.tile([1.0, 0.0], (g, 1)))
        assert cost["tt_cost"].shape == (g, e)
    assert len(runner._test_time_evals) == 2   # one executable per group size, reused
