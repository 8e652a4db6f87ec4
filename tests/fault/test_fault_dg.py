"""A DG sweep killed (SIGKILL) or stopped (SIGTERM) between the in-job checkpoints of its
running group, then rerun, ends with the results and the final state of an uninterrupted
sweep: the group resumes from its last record instead of starting over, and every record
is written once."""

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

WORKER = pathlib.Path(__file__).resolve().parent / "dg_worker.py"
STEPS = 12


def _worker(env, run_dir, phase="none", at=0):
    proc = subprocess.run([sys.executable, str(WORKER), str(run_dir), phase, str(at)], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def _results(run_dir):
    """{job dir: records without the timing and the output dir}."""
    out = {}
    for path in sorted(run_dir.glob("*/results.jsonl")):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        for r in recs:
            r.pop("step_time")
            r["args"].pop("output_dir")
        out[path.parent.name] = recs
    return out


def _final_states(run_dir):
    states = {}
    for ck_dir in sorted((run_dir / ".inflight").glob("*/checkpoints")):
        ck = ckpt_lib.Checkpointer(ck_dir)
        assert ck.latest_step() == STEPS
        ck.close()
        states[ck_dir.parent.name] = checkpoint_read.restore(ck_dir, STEPS)
    return states


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    ref = tmp_path_factory.mktemp("dg") / "ref"
    rc, err = _worker(env, ref)
    assert rc == 0, err[-3000:]
    return ref


@pytest.mark.parametrize("phase,sig", [("kill", -signal.SIGKILL), ("term", 128 + signal.SIGTERM)])
def test_dg_job_stopped_between_checkpoints_resumes_exactly(env, reference, tmp_path, phase, sig):
    run = tmp_path / "run"
    # step 7 of 12: records (and checkpoints) after steps 1 and 5; the next is after 9
    rc, err = _worker(env, run, phase, 7)
    assert rc == sig, err[-3000:]
    assert not list(run.glob("*/done"))          # no job finished
    if phase == "term":
        assert "sweep interrupted" in err
    rc, err = _worker(env, run)
    assert rc == 0, err[-3000:]
    assert "resumed at step" in err              # not started over
    a, b = _results(reference), _results(run)
    assert len(a) == 3 and a.keys() == b.keys()
    for job in a:
        assert [r["step"] for r in b[job]] == [0, 4, 8, 11]      # each record once
        assert a[job] == b[job]
    sa, sb = _final_states(reference), _final_states(run)
    assert sa.keys() == sb.keys() and len(sa) == 1
    for unit in sa:
        (xa, _), (xb, _) = sa[unit], sb[unit]
        la, lb = jax.tree.leaves(xa), jax.tree.leaves(xb)
        assert len(la) == len(lb) > 0
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
