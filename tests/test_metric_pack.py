"""The packed metrics read (mixjax.train.metric_pack) returns what jax.device_get does."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.train.metric_pack import MetricPacker


def _metrics(i):
    k = 3
    w = jnp.arange(k, dtype=jnp.float32) / 3 + i
    return {"step": jnp.int32(i), "loss": jnp.float32(np.nan) if i == 1 else jnp.float32(i / 7),
            "domain_loss": w, "domain_count": jnp.ones((k,), jnp.float32),
            "nonfinite_domain": jnp.int32(-1), "grid": jnp.arange(6, dtype=jnp.uint32).reshape(2, 3),
            "flag": jnp.bool_(i % 2), "half": jnp.asarray([1.5, -2.0], jnp.bfloat16),
            "extra": {"ent": jnp.float32(-0.0), "big": jnp.float32(np.inf)}}


def test_read_equals_device_get_bit_for_bit():
    packer = MetricPacker()
    ms = [_metrics(i) for i in range(3)]
    got = packer.read([packer.pack(m) for m in ms])
    want = jax.device_get(ms)
    for g, w in zip(got, want):
        assert jax.tree.structure(g) == jax.tree.structure(w)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            assert type(a) is type(b) is np.ndarray
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()        # NaN, -0.0 and inf included
    assert len(packer._cache) == 1                   # one program for the structure


def test_non_device_metrics_pass_through():
    packer = MetricPacker()
    m = {"loss": np.float32(0.5), "w": np.ones(2, np.float32)}
    (got,) = packer.read([packer.pack(m)])
    assert got["loss"] == np.float32(0.5) and got["w"].tolist() == [1.0, 1.0]
