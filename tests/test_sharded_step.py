"""Sharding contract: every mixer gives the same weights and losses on 1 and 8 devices.

The real train step (``mixjax.core.step``) runs for 3 steps for every registered
mixer (``mixing.names()``, so mixers added later are covered without editing this
file) on a 1-device mesh and on 8 fake CPU devices. Per-step weights, per-domain
losses and counts, loss, objective and gradient norm must agree within 1e-4
relative (fp32); the final parameters within 2e-3 in relative L2 norm per leaf
(AdamW is scale-free: see the comment at that check). Per-domain statistics, reference losses
and gradient-engine outputs are computed by the step on the *global* batch, so a
mesh that splits the batch must not change them.

Default run (fast, ~1 min on 2 busy cores): a two-matrix LM (its embedding is
sharded over fsdp and its vocabulary over tensor) on a ``data=2 x fsdp=2 x
tensor=2`` mesh, which exercises all three axes at once. ``MIXJAX_SLOW=1`` adds
the transformer LM on the three meshes ``data=8``, ``data=2 x fsdp=4`` and
``data=2 x tensor=4``. All mixers share one compiled function per mesh
(``sharding_harness``): compilation, not arithmetic, is the cost on CPU.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import sharding_harness as H
from mixjax import mixing
from mixjax.parallel import sharding

STEPS = 3
ONE_DEVICE = (1, 1, 1)
CASES = [
    pytest.param("bigram", (2, 2, 2), id="bigram-data2xfsdp2xtensor2"),
    pytest.param("transformer", (8, 1, 1), id="transformer-data8", marks=pytest.mark.slow),
    pytest.param("transformer", (2, 4, 1), id="transformer-data2xfsdp4", marks=pytest.mark.slow),
    pytest.param("transformer", (2, 1, 4), id="transformer-data2xtensor4",
                 marks=pytest.mark.slow),
]


@functools.cache
def _built(kind):
    return H.build(kind=kind)


@functools.cache
def _run(kind, shape):
    built = _built(kind)
    history, states, step = H.run(built, sharding.make_mesh(*shape),
                                  H.global_batches(STEPS, seed=0))
    params = {n: jax.device_get(states[n].params) for n in built.names}
    specs = {n: jax.tree.map(lambda x: x.sharding.spec, states[n].params) for n in built.names}
    return history, params, specs, step._cache_size()


@pytest.mark.parametrize("kind, shape", CASES)
@pytest.mark.parametrize("name", mixing.names())
def test_mixer_matches_one_device(name, kind, shape):
    built = _built(kind)
    if name in built.skipped:
        pytest.skip(built.skipped[name])
    ref_hist, ref_params, _, _ = _run(kind, ONE_DEVICE)
    hist, params, _, _ = _run(kind, shape)
    assert len(hist[name]) == STEPS
    for t, (a, b) in enumerate(zip(ref_hist[name], hist[name])):
        for key in H.COMPARED:
            np.testing.assert_allclose(
                np.asarray(b[key]), np.asarray(a[key]), rtol=1e-4, atol=1e-7,
                err_msg=f"mixer {name!r}, mesh {shape}, step {t}: {key} differs from 1 device")
    # Final parameters, per leaf in relative L2 norm. Not elementwise at 1e-4: AdamW's
    # update lr * m / sqrt(v) is scale-free, so a coordinate whose gradient is at fp32
    # rounding level (|g| ~ 1e-5 next to terms ~ 1e-2) moves by ~lr whatever its
    # rounding, and a 0.4% rounding difference there becomes ~1e-4 in the parameter
    # (measured: transformer, 3 steps, worst leaf 5.9e-4 relative). A layout bug (a
    # missing cross-shard reduction, a double count) moves parameters by O(lr), i.e. a
    # relative difference of order 1; the per-step gradient norm above is held to 1e-4.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_params[name]),
                            jax.tree.leaves(params[name])):
        rel = np.linalg.norm(np.asarray(b) - a) / max(np.linalg.norm(a), 1e-12)
        assert rel < 2e-3, (f"mixer {name!r}, mesh {shape}: final params "
                            f"{jax.tree_util.keystr(path)} differ by {rel:.2e} (relative L2)")


def test_the_8_device_run_is_really_sharded():
    """Guards the comparison above against a silently replicated run."""
    _, _, specs, _ = _run("bigram", (2, 2, 2))
    for name, spec in specs.items():
        assert spec["embed"] == P("tensor", "fsdp"), name
        assert spec["out"] == P("fsdp", "tensor"), name


def test_weights_move_for_adaptive_mixers():
    """The equality test is not vacuous: adaptive mixers change their weights in 3 steps."""
    hist, _, _, _ = _run("bigram", ONE_DEVICE)
    moved = {n for n, h in hist.items()
             if not np.allclose(np.asarray(h[0]["weights"]), np.asarray(h[-1]["weights"]))}
    adaptive = {"doremi", "doge", "rnb", "dga"} & set(hist)
    assert adaptive and adaptive <= moved, sorted(adaptive - moved)


@pytest.mark.parametrize("shape", [ONE_DEVICE, (2, 2, 2)])
def test_no_recompilation_after_the_first_step(shape):
    *_, cache_size = _run("bigram", shape)
    assert cache_size == 1, f"the step compiled {cache_size} times in {STEPS} steps"
