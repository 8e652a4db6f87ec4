"""Launch NPROC JAX worker processes on this host (gloo over 127.0.0.1) and wait for them."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker: pathlib.Path, nproc: int, extra_args, devices_per_process: int = 4,
                timeout_s: int = TIMEOUT_S) -> list[str]:
    """Runs ``worker RANK NPROC PORT *extra_args`` for every rank; returns their logs.

    Skips where gloo cannot bind to loopback; fails naming the worker that failed or timed out.
    """
    if not socket.gethostbyname(socket.gethostname()).startswith("127."):
        pytest.skip("gloo binds to the address of this host's name, which is not loopback")
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process} "
                       "--xla_cpu_use_fusion_emitters=false")
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(nproc), str(port),
                               *map(str, extra_args)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(nproc)]
    try:
        logs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{worker.name}: workers did not finish within {timeout_s} s")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {r} failed (exit {p.returncode}):\n{log[-4000:]}"
    return logs
