"""A proxy swarm killed between checkpoints (SIGKILL) or stopped (SIGTERM), then resumed,
ends with the logs, the state and the result of an uninterrupted swarm: every step logged
once (no record of the killed process's steps after its checkpoint survives), the stacked
state and the final evaluations bit for bit."""

import collections
import json
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import checkpoint_read

from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import metrics as metrics_lib

WORKER = pathlib.Path(__file__).resolve().parent / "swarm_worker.py"
STEPS = 8


def _worker(env, out, phase="none", at=0):
    proc = subprocess.run([sys.executable, str(WORKER), str(out), phase, str(at)], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def _state(out):
    return checkpoint_read.restore(out / "checkpoints", STEPS)


def _result(out):
    rec = json.loads((out / "result.json").read_text())
    rec.pop("seconds")
    return rec


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    ref = tmp_path_factory.mktemp("swarm") / "ref"
    rc, err = _worker(env, ref)
    assert rc == 0, err[-3000:]
    return ref


@pytest.mark.parametrize("phase,sig", [("kill", -signal.SIGKILL), ("term", 128 + signal.SIGTERM)])
def test_swarm_stopped_between_checkpoints_resumes_exactly(env, reference, tmp_path, phase, sig):
    run = tmp_path / "run"
    # step 3: checkpoint 2 is the latest; the metrics record of step 3 is on disk
    rc, err = _worker(env, run, phase, 3)
    assert rc == sig, err[-3000:]
    logged = [r["step"] for r in metrics_lib.read_jsonl(run / "metrics.jsonl")]
    if phase == "kill":
        assert logged == [1, 2, 3]
    else:   # trained on the batches already drawn, then checkpointed where it stopped
        assert logged == list(range(1, logged[-1] + 1)) and 3 <= logged[-1] < STEPS
        ck = ckpt_lib.Checkpointer(run / "checkpoints")
        assert ck.latest_step() == logged[-1]
        ck.close()
    rc, err = _worker(env, run)
    assert rc == 0, err[-3000:]
    assert "swarm: resumed at step" in err
    a, b = metrics_lib.read_jsonl(reference / "metrics.jsonl"), \
        metrics_lib.read_jsonl(run / "metrics.jsonl")
    steps = [r["step"] for r in b]
    assert steps == list(range(1, STEPS + 1)), collections.Counter(steps)   # no duplicates
    assert a == b
    (sa, ha), (sb, hb) = _state(reference), _state(run)
    la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert ha == hb
    assert _result(reference) == _result(run)
