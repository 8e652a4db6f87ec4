"""Two JAX processes on one machine (127.0.0.1, gloo CPU collectives, 4 fake devices each)
train exactly like one process with 8 devices.

The workers (``tests/multiprocess_worker.py``) each read only their share of every
domain through the real ``DomainSampler`` and feed only their rows of the global
batch; the step of mixers using per-domain gradients (DoGE: Gram matrix and combined
gradient; DGA: inner products with a target gradient), reference losses (DoReMi) and
per-domain losses (ODM) must give this process's single-process 8-device results
on the same global batches. The workers also save the sharded state asynchronously
from both processes with their own sampler states, and restore both exactly.

One subprocess pair, ~20 s of CPU; every wait is bounded (the workers get a 60 s
coordinator timeout and are killed after ``TIMEOUT_S``).
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import sharding_harness as H
from multiprocess_launch import TIMEOUT_S, free_port, run_workers
from mixjax.parallel import sharding

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")
NPROC = 2


@functools.cache
def _workers(out_dir: str):
    run_workers(WORKER, NPROC, [out_dir])
    return [json.loads((pathlib.Path(out_dir) / f"rank{r}.json").read_text())
            for r in range(NPROC)]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    return _workers(str(tmp_path_factory.mktemp("mp")))


@pytest.fixture(scope="module")
def reference():
    """The single-process run: 8 devices, same mesh shape, the workers' global batches."""
    parts = [H.sampler_batches(p, NPROC, 3)[1] for p in range(NPROC)]
    batches = H.concat_processes(parts)
    sampler = H.sampler_batches(0, 1, 0)[0]
    built = H.build(("doge", "dga", "doremi", "odm"), vocab=sampler.tokenizer.vocab_size,
                    pad=sampler.tokenizer.pad_id)
    history, _, _ = H.run(built, sharding.make_mesh(2, 2, 2), batches)
    return history


def test_each_process_feeds_its_own_rows_of_the_global_mesh(workers):
    for r, w in enumerate(workers):
        assert (w["devices"], w["local_devices"]) == (8, 4)
        assert w["rows"] == [r * 8, (r + 1) * 8]
        assert w["cache_size"] == 1


def test_global_batch_composition_matches_a_single_host():
    """Same seed and weights: the per-process rows, concatenated, have the single-host
    sampler's domain of every row."""
    single = H.sampler_batches(0, 1, 3)[1]
    parts = [H.sampler_batches(p, NPROC, 3)[1] for p in range(NPROC)]
    for t, glob in enumerate(H.concat_processes(parts)):
        np.testing.assert_array_equal(glob["domain_id"], single[t]["domain_id"], err_msg=f"batch {t}")


def test_two_processes_match_one_process_with_8_devices(workers, reference):
    for r, w in enumerate(workers):
        for name, steps in w["metrics"].items():
            for t, (got, want) in enumerate(zip(steps, reference[name])):
                for key in H.COMPARED:
                    np.testing.assert_allclose(
                        np.asarray(got[key]), np.asarray(want[key]), rtol=1e-4, atol=1e-7,
                        err_msg=f"process {r}, mixer {name!r}, step {t}: {key}")
    # the gradient mixers actually moved their weights
    for name in ("doge", "dga"):
        w = workers[0]["metrics"][name]
        assert not np.allclose(w[0]["weights"], w[-1]["weights"]), name


def test_async_multi_process_checkpoint_restores_state_and_each_sampler(workers):
    for r, w in enumerate(workers):
        assert w["restored_equal"], f"process {r}: restored state differs from the saved one"
        assert w["host_step"] == 3
        assert w["sampler_process"] == r       # its own sampler state, not process 0's
        assert w["sampler_resumes_exactly"], f"process {r}: sampler did not resume exactly"


@pytest.mark.slow
def test_mixjax_train_cli_on_two_processes_resumes(tmp_path):
    """``mixjax train`` end to end as the launch scripts run it (MIXJAX_* variables): a
    data=8 mesh over 2 processes, async checkpoints with per-process sampler states,
    then ``--resume`` to more steps; process 0 alone writes the logs (~3 min)."""
    run_dir = tmp_path / "run"
    sets = ["--set", "train.eval_every=2", "--set", "train.ckpt_every=2",
            "--set", f"train.run_dir={run_dir}", "--set", "data.seq_len=32",
            "--set", "model.d_model=32", "--set", "mesh.data=-1", "--set", "train.progress=False"]
    config = str(pathlib.Path(__file__).parents[1] / "configs" / "lm_tiny_uniform.py")

    def launch(steps):
        port = free_port()
        procs = []
        for r in range(NPROC):
            env = dict(os.environ, JAX_PLATFORMS="cpu", MIXJAX_COORDINATOR=f"127.0.0.1:{port}",
                       MIXJAX_NUM_PROCESSES=str(NPROC), MIXJAX_PROCESS_ID=str(r),
                       XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_cpu_use_fusion_emitters=false")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mixjax.cli", "train", config, "--resume",
                 "--set", f"train.steps={steps}", *sets],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for p in procs:
            out = p.communicate(timeout=TIMEOUT_S)[0]
            assert p.returncode == 0, out[-4000:]

    launch(4)
    ck = run_dir / "checkpoints" / "4" / "process"
    assert sorted(x.name for x in ck.glob("process_*.json")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]
    launch(6)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]        # one writer, no duplicated or lost records
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["processes"] == 2 and info["mesh"]["data"] == 8
