"""The batch maker (mixjax.train.batches) reuses the placed sampling weights only while
they stay the same; every batch holds exactly its host arrays."""

import types

import numpy as np

from mixjax.config import Config
from mixjax.parallel import sharding
from mixjax.train.batches import batch_maker


def test_sampling_weights_placed_again_when_they_change():
    cfg = Config(name="t")
    cfg.data.batch_size = 4
    trainer = types.SimpleNamespace(cfg=cfg, mesh=sharding.make_mesh(1), blocked_batches=True,
                                    target_tokens=None, check_stratified=False, domains=("a", "b"))
    make = batch_maker(trainer)
    rng = np.random.default_rng(0)
    weights = [np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([0.25, 0.75]),
               np.array([0.25, 0.75]), np.array([0.5, 0.5])]
    placed = []
    for t, w in enumerate(weights):
        host = {"tokens": rng.integers(0, 9, (4, 5)).astype(np.int32),
                "domain_id": rng.integers(0, 2, 4).astype(np.int32)}
        batch = make(host, w, t)
        assert sorted(batch) == ["domain_id", "sampling_weights", "tokens"]
        np.testing.assert_array_equal(np.asarray(batch["tokens"]), host["tokens"])
        np.testing.assert_array_equal(np.asarray(batch["domain_id"]), host["domain_id"])
        got = np.asarray(batch["sampling_weights"])
        assert got.dtype == np.float32 and got.tobytes() == w.astype(np.float32).tobytes()
        placed.append(batch["sampling_weights"])
    # the same weights as the batch before: the same device array; a change: a new one
    assert placed[1] is placed[0] and placed[3] is placed[2]
    assert placed[2] is not placed[1] and placed[4] is not placed[3]
