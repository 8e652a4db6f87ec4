"""Timing helper: how many tokens/s a batch iterator delivers.

Used by benchmarks/bench_data.py and by trainer benchmarks that put the data
rate next to the training rate (both measured in one run).
"""

from __future__ import annotations

import time
from typing import Iterator


def measure_throughput(batches: Iterator[dict], num_batches: int = 100, warmup: int = 5) -> dict:
    """Draws ``warmup + num_batches`` batches; tokens/s and batches/s of the timed part."""
    for _ in range(warmup):
        next(batches)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(num_batches):
        tokens += next(batches)["tokens"].size
    dt = time.perf_counter() - t0
    return {"tokens_per_s": tokens / dt, "batches_per_s": num_batches / dt, "seconds": dt,
            "tokens": tokens}
