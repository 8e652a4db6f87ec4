"""Fault-injection tests: the shared fakes live one directory up."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import os  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def env():
    """The environment of a fault worker subprocess: CPU, this checkout on the path, and the
    suite's compilation cache (tests/conftest.py), which the workers share with each other."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
