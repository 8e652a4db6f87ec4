"""A swarm spread over two JAX processes (127.0.0.1, gloo CPU collectives, 4 fake devices
each) on a models=4 x data=2 mesh equals the unsharded swarm of one process: each
process places only its proxies' rows of the batch (``Swarm.local_block`` +
``jax.make_array_from_process_local_data``), as every host of a pod does.

One subprocess pair (~50 s of CPU on 2 cores: two process starts and compilations, plus
the one-device reference), so it is marked slow (MIXJAX_SLOW=1); the in-process
8-fake-device tests of tests/test_search_swarm.py cover the mesh in CI. Every wait is
bounded.
"""

import pathlib

import jax
import numpy as np
import pytest

from mixjax.search import swarm as S
from multiprocess_launch import run_workers
from test_search_swarm import mixtures, synthetic_batches, tiny_cfg

WORKER = pathlib.Path(__file__).with_name("swarm_multiprocess_worker.py")
NPROC = 2


@pytest.mark.slow
def test_swarm_over_two_processes_equals_one_device(tmp_path):
    run_workers(WORKER, NPROC, [tmp_path, "map"])
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(NPROC)]
    # process r holds proxies [4r, 4r + 4), every row of their batches
    for r, g in enumerate(got):
        assert g["proxies"].tolist() == [4 * r, 4 * r + 4] and g["rows"].tolist() == [0, 8]

    h = mixtures(8, seed=5)
    sw = S.Swarm(tiny_cfg(), h, route="upsample", strategy="map")
    state, step = sw.init_state(), sw.train_step()
    for batch in synthetic_batches(h, sw.data.vocab_size, steps=2):
        state, m = step(state, sw.device_batch(batch))
    want = [np.asarray(x, np.float64) for x in jax.tree.leaves(state["proxy"].params)]
    for r, g in enumerate(got):
        for i, w in enumerate(want):
            x = g[f"p{i}"].astype(np.float64)
            assert np.linalg.norm(x - w) <= 1e-5 * np.linalg.norm(w), f"process {r}, leaf {i}"
        np.testing.assert_allclose(g["eval"], sw.evaluate(state), rtol=1e-5)
        np.testing.assert_allclose(g["loss"], np.asarray(m["loss"]), rtol=1e-5)
