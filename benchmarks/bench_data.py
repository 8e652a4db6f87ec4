"""Data pipeline throughput: sampler + packing tokens/s.

    .venv/bin/python benchmarks/bench_data.py [--batches 200] [--seq-len 1024] [--batch-size 32]

Prints tokens/s for (side by side, one run, same machine):
  1. ``pretokenized``: domains whose documents are already int32 token arrays
     (in memory): the sampler + packing + batch assembly cost alone
     (target: >= 2 M tokens/s);
  2. ``jsonl+byte``: the same sizes read from JSONL files and byte-tokenized
     in the grain pipeline (in this process; ``--workers N``: also in N grain
     worker processes per domain);
  3. ``mixpile-tiny``: the shipped corpus (8 domains, real documents);
  4. ``pack_arrays`` (numpy packing only) as the ceiling of the packing step.
``mixjax.data.throughput.measure_throughput(sampler, num_batches)`` is the
function a trainer benchmark calls to put the data rate next to its own tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from mixjax.data.throughput import measure_throughput


def _docs(rng, n, mean_len):
    lens = rng.integers(mean_len // 4, mean_len * 7 // 4, size=n)
    return [rng.integers(0, 256, size=int(m)).astype(np.int32) for m in lens]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--doc-len", type=int, default=2000, help="mean document length in tokens")
    p.add_argument("--mode", default="multinomial")
    p.add_argument("--workers", type=int, default=0,
                   help="also time JSONL+byte with this many grain workers per domain")
    args = p.parse_args(argv)

    from mixjax import data

    rng = np.random.default_rng(0)
    names = [f"d{i}" for i in range(args.domains)]
    arrays = {n: _docs(rng, 2000, args.doc_len) for n in names}
    kw = dict(batch_size=args.batch_size, seq_len=args.seq_len, mode=args.mode, split=None, seed=0)
    results = {}

    s = data.DomainSampler({n: data.ListSource(a, n) for n, a in arrays.items()}, **kw)
    results["pretokenized"] = measure_throughput(s, args.batches)

    with tempfile.TemporaryDirectory() as tmp:
        for n, docs in arrays.items():
            with open(os.path.join(tmp, f"{n}.jsonl"), "w") as fh:
                for d in docs:   # ASCII text with the same byte lengths
                    fh.write(json.dumps({"text": bytes((d % 95 + 32).astype(np.uint8)).decode()}) + "\n")
        s = data.DomainSampler(data.corpus_sources(tmp), **kw)
        results["jsonl+byte"] = measure_throughput(s, args.batches)
        if args.workers:
            with data.DomainSampler(data.corpus_sources(tmp), num_workers=args.workers, **kw) as s:
                results[f"jsonl+byte w{args.workers}"] = measure_throughput(s, args.batches, warmup=20)

    try:   # the shipped corpus: real documents of very different lengths
        s = data.DomainSampler(data.corpus_sources("mixpile-tiny"), **kw)
        results["mixpile-tiny"] = measure_throughput(s, args.batches)
    except (FileNotFoundError, ImportError) as e:
        print(f"(mixpile-tiny skipped: {e})")

    flat = [d for a in arrays.values() for d in a]
    import time
    t0 = time.perf_counter()
    out = data.pack_arrays(flat, length=args.seq_len + 1, eos_id=257, pad_id=256)
    dt = time.perf_counter() - t0
    results["pack_arrays"] = {"tokens_per_s": out.size / dt, "seconds": dt, "tokens": out.size}

    print(f"B={args.batch_size} S={args.seq_len} K={args.domains} mode={args.mode} "
          f"mean doc {args.doc_len} tokens, {args.batches} batches")
    base = results["pretokenized"]["tokens_per_s"]
    for name, r in results.items():
        print(f"  {name:14s} {r['tokens_per_s'] / 1e6:8.2f} M tokens/s   "
              f"({r['tokens_per_s'] / base:5.2f}x pretokenized)")
    target = 2e6
    print(f"  target pretokenized >= {target / 1e6:.1f} M tokens/s: "
          f"{'met' if base >= target else 'NOT met'} ({base / target:.2f}x)")


if __name__ == "__main__":
    main()
