"""The host path's batched writes and placement give what the per-item versions gave."""

import jax
import pytest
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mixjax.config import Config
from mixjax.parallel import distributed, sharding, step_sharding
from mixjax.train import metrics as metrics_lib


def test_weights_are_buffered_to_the_next_record_and_every_change_is_kept(tmp_path):
    domains = ("a", "b")
    w = metrics_lib.MetricsWriter(tmp_path, domains)
    w.weights(0, [0.5, 0.5])
    for s in range(1, 6):
        w.weights(s, [0.5 + 0.01 * s, 0.5 - 0.01 * s])
    assert metrics_lib.read_jsonl(tmp_path / "weights.jsonl") == []     # nothing per step
    w.write("metrics.jsonl", {"step": 5, "loss": 1.0})                # a log record: written
    got = metrics_lib.read_jsonl(tmp_path / "weights.jsonl")
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 5]
    assert got[3]["weights"] == {"a": 0.53, "b": 0.47}
    w.weights(6, [0.9, 0.1])
    w.flush()                                                          # a checkpoint: written
    assert metrics_lib.read_jsonl(tmp_path / "weights.jsonl")[-1]["step"] == 6
    w.weights(7, [0.8, 0.2])
    w.close()                                                          # the end (or an error)
    assert metrics_lib.read_jsonl(tmp_path / "weights.jsonl")[-1]["step"] == 7
    tb = [(t, s) for t, s, _ in metrics_lib.read_tensorboard_scalars(tmp_path / "tb")
          if t.startswith("weights/")]
    # TensorBoard: the latest change at each write (steps 5, 6, 7), one event per record
    assert tb == [("weights/a", 5), ("weights/b", 5), ("weights/a", 6), ("weights/b", 6),
                  ("weights/a", 7), ("weights/b", 7)]
    scalars = metrics_lib.read_tensorboard_scalars(tmp_path / "tb")
    assert ("metrics/loss", 5, 1.0) in scalars


def test_non_finite_weights_are_strings_and_tensorboard_tags_are_cleaned(tmp_path):
    w = metrics_lib.MetricsWriter(tmp_path, ("a", "b c"))
    w.weights(3, np.array([np.nan, 1.0], np.float32))
    w.write("metrics.jsonl", {"step": 3, "loss": 2.0})
    w.close()
    assert metrics_lib.read_jsonl(tmp_path / "weights.jsonl") == [
        {"step": 3, "weights": {"a": "nan", "b c": 1.0}}]
    tags = {t for t, _, _ in metrics_lib.read_tensorboard_scalars(tmp_path / "tb")}
    assert tags == {"weights/a", "weights/b_c", "metrics/loss"}     # tensorboardX's cleaning


@pytest.mark.parametrize("n_devices", [1, None])
def test_single_process_batch_placement_equals_per_key_placement(n_devices):
    # one device: the jitted placement; all (8 fake devices): device_put
    mesh = sharding.mesh_from_config(Config().mesh, devices=jax.devices()[:n_devices])
    b = {"tokens": np.arange(4 * 9, dtype=np.int32).reshape(4, 9),
         "domain_id": np.array([0, 1, 1, 0], np.int32),
         "sampling_weights": np.array([0.25, 0.75], np.float32)}
    got = step_sharding.shard_batch(b, mesh, 4)
    axes = sharding.batch_axes(mesh)
    want = distributed.global_batch({k: b[k] for k in ("tokens", "domain_id")}, mesh, axes, 4,
                                    replicated=())
    want["sampling_weights"] = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P()), b["sampling_weights"], (2,))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
        assert got[k].sharding.is_equivalent_to(want[k].sharding, got[k].ndim), k
        assert got[k].dtype == want[k].dtype
