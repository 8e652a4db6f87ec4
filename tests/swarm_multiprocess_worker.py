"""One process of the 2-process swarm test (``tests/test_search_swarm_multiprocess.py``);
not a test itself.

    python tests/swarm_multiprocess_worker.py RANK NUM_PROCESSES PORT OUT_DIR STRATEGY

Joins the job on 127.0.0.1:PORT (4 fake CPU devices per process from the caller's
XLA_FLAGS), builds a swarm of 8 proxies on a models=4 x data=2 mesh spanning both
processes, and trains it for 2 steps on the test's synthetic global batches, of which
it places only its own block (``Swarm.local_block``: its proxies, their rows) with
``Swarm.device_batch``. Writes its block, the final parameters and the per-proxy eval
losses (gathered on every process) to ``OUT_DIR/rank<r>.npz``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main(rank: int, nproc: int, port: int, out_dir: pathlib.Path, strategy: str) -> None:
    import jax
    import numpy as np

    from mixjax.parallel import distributed

    distributed.initialize(f"127.0.0.1:{port}", nproc, rank, timeout_s=60)
    from mixjax.search import swarm as S
    from test_search_swarm import mixtures, synthetic_batches, tiny_cfg

    assert jax.process_count() == nproc and jax.process_index() == rank
    h = mixtures(8, seed=5)
    sw = S.Swarm(tiny_cfg(), h, route="upsample", strategy=strategy, models=4, data_shards=2)
    proxies, rows = sw.local_block()
    state, step = sw.init_state(), sw.train_step()
    for batch in synthetic_batches(h, sw.data.vocab_size, steps=2):
        local = {"tokens": batch["tokens"][proxies.start:proxies.stop],
                 "domain_id": batch["domain_id"][proxies.start:proxies.stop],
                 "sampling_weights": batch["sampling_weights"][proxies.start:proxies.stop]}
        state, m = step(state, sw.device_batch(local))
    params = distributed.fetch(state["proxy"].params)
    flat = {f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
    np.savez(out_dir / f"rank{rank}.npz", proxies=[proxies.start, proxies.stop],
             rows=[rows.start, rows.stop], eval=sw.evaluate(state),
             loss=np.asarray(distributed.fetch(m["loss"])), **flat)
    distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4]),
         sys.argv[5])
