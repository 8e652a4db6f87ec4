"""Per-batch host pieces of the training loop, alone in one thread: CPU microseconds.

    python benchmarks/bench_host_pieces.py [--root CHECKOUT] [--shapes 16x128,64x1024]
    python benchmarks/bench_host_pieces.py --token-store both   # draw without / with data.token_store

Times, with ``time.thread_time`` (what waiting for other processes cannot inflate), the
pieces the prefetch thread runs per batch (``composer``: the domain ids; ``draw``:
``weights_for`` + ``next(sampler)``, i.e. composer + packed rows; ``place``: the batch
maker of ``mixjax.train.batches``, i.e. the device placement; ``draw+place``) and the
loop's metrics read for 10 steps of 11-leaf metrics (``jax.device_get`` of the dicts,
and, where the checkout has :mod:`mixjax.train.metric_pack`, pack per step + one read).
``--root``: import another checkout's code (run old and new alternately to compare).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time


def timed(f, n: int) -> float:
    for _ in range(20):
        f()
    c = time.thread_time()
    for _ in range(n):
        f()
    return (time.thread_time() - c) / n * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[1]))
    ap.add_argument("--shapes", default="16x128,64x1024")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--token-store", default="off", choices=("off", "on", "both"),
                    help="data.token_store for the sampler (both: a row for each; the stores "
                         "are built in a temporary directory first, outside the timing)")
    args = ap.parse_args(argv)
    sys.path.insert(0, args.root)
    import jax
    import jax.numpy as jnp
    from mixjax import config as config_lib
    from mixjax.train import loop
    from mixjax.train.batches import batch_maker

    print(f"root {args.root}; CPU us per call, {args.n} calls")
    import tempfile
    cache = tempfile.mkdtemp(prefix="bench_pieces_")
    stores = {"off": (False,), "on": (True,), "both": (False, True)}[args.token_store]
    for shape, store in [(sh, st) for sh in args.shapes.split(",") for st in stores]:
        b, s = map(int, shape.split("x"))
        extra = [f"data.token_store={store}", f"data.cache_dir={cache}"] \
            if args.token_store != "off" else []
        cfg = config_lib.load(f"{args.root}/configs/lm_tiny_uniform.py", [
            f"data.batch_size={b}", f"data.seq_len={s}", "train.run_dir=/tmp/unused", *extra])
        tr = loop.Trainer(cfg)
        sampler = tr.data.make_sampler(tr.sampler_weights())
        make = batch_maker(tr)
        t = [0]

        def draw():
            p = sampler.weights_for(t[0])
            t[0] += 1
            return next(sampler), p

        host, p = draw()
        res = {"composer": timed(sampler.composer.next_ids, args.n), "draw": timed(draw, args.n),
               "place": timed(lambda: make(host, p, 0), args.n),
               "draw+place": timed(lambda: make(*draw(), 0), args.n)}
        label = f"{shape} token_store={'on' if store else 'off'}" if extra else shape
        print(label, " ".join(f"{k} {v:.1f}" for k, v in res.items()), flush=True)

    k = 8
    z = jnp.arange(k, dtype=jnp.float32)
    ms = [{"step": jnp.int32(i), "objective": z[0] + i, "loss": z[1] + i, "tokens": z[2],
           "domain_loss": z + i, "domain_count": z, "weights": z, "sampling_weights": z,
           "grad_norm": z[3], "nonfinite_domain": jnp.int32(-1), "lr": z[4]} for i in range(10)]
    jax.block_until_ready(ms)
    res = {"device_get": timed(lambda: jax.device_get(ms), args.n)}
    try:
        from mixjax.train.metric_pack import MetricPacker
        packer = MetricPacker()
        res["pack+read"] = timed(lambda: packer.read([packer.pack(m) for m in ms]), args.n)
    except ImportError:
        pass
    print("metrics of 10 steps", " ".join(f"{k} {v:.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
