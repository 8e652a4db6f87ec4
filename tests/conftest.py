"""Test setup: 8 fake CPU devices (for sharding tests) before JAX initialises."""

import os

# XLA's older loop emitters instead of its MLIR fusion emitters: same results, and the
# tests' tiny programs compile much faster (test_mixing_behaviour + test_grads +
# test_search_swarm, cold cache, one process: 133 -> 88 CPU-s).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run (and the next): tests build many
# identical tiny steps from fresh closures, which the in-memory jit cache cannot share;
# measured on 4 trainer-heavy files: 273 s -> 199 s of CPU with a cold cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".cache", "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# A whole run writes ~90 MB and reruns mostly reuse it; delete the folder to reclaim it.
# (jax's size-capped LRU mode, JAX_COMPILATION_CACHE_MAX_SIZE, fails on entries written
# without it: "Error writing persistent compilation cache entry ... -atime".)
# Tests run tiny programs: compiling them is most of their cost, running them is not.
# Unoptimised XLA (same semantics) compiles much faster: on the same 4 files, 253 s of CPU
# (neither) -> 141 s (this and the cold cache above), on an idle machine. Tests that read XLA's optimised memory figures turn
# the optimisations back on for themselves (the `xla_optimised` fixture).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402


def _file_seconds() -> dict:
    import json
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "file_durations.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pytest_collection_modifyitems(config, items):
    # Longest files first: the test command hands whole files to its 2 workers in this
    # order (--dist loadfile --no-loadscope-reorder), so a long file never starts last and
    # leaves the other worker idle. Table: scripts/test_durations.py; order only, never selection.
    seconds = _file_seconds()
    rank = {item: -seconds.get(item.nodeid.split("::")[0], 0.0) for item in items}
    items.sort(key=rank.__getitem__)                 # stable: file order kept within a file
    if os.environ.get("MIXJAX_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow experiment; run with MIXJAX_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def xla_optimised():
    """Compile with XLA's full optimisation pipeline inside this test (memory analysis,
    buffer assignment and fusion figures are only meaningful for optimised programs)."""
    import jax
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
