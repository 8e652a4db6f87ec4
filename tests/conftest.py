"""Test setup: 8 fake CPU devices (for sharding tests) before JAX initialises."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MIXJAX_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow experiment; run with MIXJAX_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
