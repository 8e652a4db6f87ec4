"""One process of the 2-process test (``tests/test_multiprocess.py``); not a test itself.

    python tests/multiprocess_worker.py RANK NUM_PROCESSES PORT OUT_DIR

Joins the job on 127.0.0.1:PORT (jax.distributed, CPU collectives over gloo), with the
fake CPU device count given by the caller's XLA_FLAGS, then:

1. draws its rows of 3 global batches from the real ``DomainSampler``
   (process_index/process_count: it reads only its share of every domain), runs the
   real train step of several mixers on a data=2 x fsdp=2 x tensor=2 mesh spanning
   both processes, and writes the per-step metrics (identical on every process:
   they are replicated) to ``OUT_DIR/rank<r>.json``;
2. saves the sharded train state asynchronously from every process with
   ``mixjax.train.checkpoint.Checkpointer`` together with this process's sampler
   state, restores both, and records whether the restored state equals the saved
   one shard by shard and whether the restored sampler draws the same next batch.
"""

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

MIXERS = ("doge", "dga", "doremi", "odm")   # per-domain gradients (gram / grad_dot), ref, loss
STEPS = 3


def main(rank: int, nproc: int, port: int, out_dir: pathlib.Path) -> None:
    import jax
    import numpy as np

    from mixjax.parallel import distributed
    from mixjax.parallel import sharding

    distributed.initialize(f"127.0.0.1:{port}", nproc, rank, timeout_s=60)
    import sharding_harness as H
    from mixjax.train import checkpoint as ckpt_lib

    assert jax.process_count() == nproc and jax.process_index() == rank
    mesh = sharding.make_mesh(2, 2, 2)
    rows = distributed.process_rows(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))), H.BATCH)
    local = H.BATCH // nproc
    assert rows == (rank * local, (rank + 1) * local), rows   # the sampler's rows

    sampler, batches = H.sampler_batches(rank, nproc, STEPS)
    built = H.build(MIXERS, vocab=sampler.tokenizer.vocab_size, pad=sampler.tokenizer.pad_id)
    history, states, step = H.run(built, mesh, batches, global_batch_size=H.BATCH)
    result = {
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "rows": list(rows), "cache_size": step._cache_size(),
        "domain_id": [b["domain_id"].tolist() for b in batches],
        "metrics": {n: [{k: np.asarray(m[k]).tolist() for k in H.COMPARED} for m in h]
                    for n, h in history.items()},
    }

    # Checkpoint: async save of sharded arrays from all processes + per-process sampler.
    state = states["doge"]
    ck = ckpt_lib.Checkpointer(out_dir / "ckpt", async_save=True)
    ck.save(STEPS, state, {"step": STEPS}, process={"sampler": sampler.get_state()}, wait=False)
    expected_next = next(sampler)
    abstract = jax.tree.map(ckpt_lib._abstract, state)
    restored, host = ck.restore(STEPS, abstract)
    own = ck.restore_process(STEPS)
    ck.close()
    same = jax.tree.map(
        lambda a, b: a.sharding == b.sharding and all(
            np.array_equal(np.asarray(x.data), np.asarray(y.data))
            for x, y in zip(a.addressable_shards, b.addressable_shards)),
        state, restored)
    fresh, _ = H.sampler_batches(rank, nproc, 0)
    fresh.set_state(own["sampler"])
    again = next(fresh)
    result.update(
        restored_equal=bool(all(jax.tree.leaves(same))), host_step=host["step"],
        sampler_process=own["sampler"]["config"]["process_index"],
        sampler_resumes_exactly=bool(
            np.array_equal(again["tokens"], expected_next["tokens"])
            and np.array_equal(again["domain_id"], expected_next["domain_id"])))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    rank, nproc, port = (int(x) for x in sys.argv[1:4])
    out = pathlib.Path(sys.argv[4])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(rank, nproc, port, out)
