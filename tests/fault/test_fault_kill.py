"""SIGKILL at chosen points (during a step, inside an evaluation, while a checkpoint is
being written), resume, repeat; the end result equals the uninterrupted run bit for bit:
train state, metrics, weights, evaluations and TensorBoard scalars.

CI runs one chain of 3 kill points (plus a torn metrics line) on ODM, an online mixer
whose weights drive the sampler; the slow tier (MIXJAX_SLOW=1) runs 8 seeded-random
kill points on each of ODM, DoGE (a gradient mixer) and uniform (static). Workers share
a persistent XLA compilation cache, so only the first process compiles.
"""

import collections
import pathlib
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import checkpoint_read

from mixjax.train import metrics as metrics_lib

WORKER = pathlib.Path(__file__).resolve().parent / "fault_worker.py"
EVAL_EVERY, CKPT_EVERY = 3, 2          # as in fault_worker.config


def _worker(env, run_dir, mixer, steps, resume, phase="none", at=0, delay=0.0):
    proc = subprocess.run([sys.executable, str(WORKER), str(run_dir), mixer, str(steps),
                           "1" if resume else "0", phase, str(at), str(delay)],
                          env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def _final_state(run_dir, step):
    return checkpoint_read.restore(run_dir / "checkpoints", step)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def _scalars(run_dir):
    return collections.Counter((t, s, v) for t, s, v in
                               metrics_lib.read_tensorboard_scalars(run_dir / "tb")
                               if not t.endswith("tokens_per_s"))


def run_chain(env, tmp, mixer, steps, kills, torn_after_first=False):
    """Reference run, then the killed chain; returns the figures and asserts equality."""
    ref, run = tmp / f"{mixer}_ref", tmp / f"{mixer}_chain"
    rc, err = _worker(env, ref, mixer, steps, False)
    assert rc == 0, err[-3000:]
    killed, resumed_lines = 0, []
    for i, (phase, at, delay) in enumerate(kills):
        rc, err = _worker(env, run, mixer, steps, i > 0, phase, at, delay)
        assert rc in (-signal.SIGKILL, 0), err[-3000:]
        killed += rc == -signal.SIGKILL
        resumed_lines += [line for line in err.splitlines() if line.startswith("resumed from")]
        if i == 0 and torn_after_first:      # a crash in the middle of a metrics line
            with open(run / "metrics.jsonl", "a") as f:
                f.write('{"step": 99, "loss": 1.')
    rc, err = _worker(env, run, mixer, steps, True)
    assert rc == 0, err[-3000:]
    resumed_lines += [line for line in err.splitlines() if line.startswith("resumed from")]
    a, ha = _final_state(ref, steps)
    b, hb = _final_state(run, steps)
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    exact = len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                       for x, y in zip(la, lb)) and ha == hb
    lost = dup = 0
    for name in metrics_lib.FILES:
        ra, rb = metrics_lib.read_jsonl(ref / name), metrics_lib.read_jsonl(run / name)
        steps_a = collections.Counter(r["step"] for r in ra)
        steps_b = collections.Counter(r["step"] for r in rb)
        lost += sum((steps_a - steps_b).values())
        dup += sum((steps_b - steps_a).values())
        exact = exact and _strip(ra) == _strip(rb)
    ta, tb = _scalars(ref), _scalars(run)
    lost += sum((ta - tb).values())
    dup += sum((tb - ta).values())
    exact = exact and ta == tb
    return {"kills": killed, "exact": exact, "lost": lost, "duplicated": dup,
            "resumes": len(resumed_lines)}


def test_three_kill_points_resume_exactly(env, tmp_path):
    # during step 3 (checkpoint 2 is the latest), while checkpoint 4 is being written,
    # inside the evaluation after step 6; a torn metrics line after the first kill
    kills = [("step", 3, 0.0), ("ckpt", 4, 0.0), ("eval", 6, 0.0)]
    got = run_chain(env, tmp_path, "odm", 8, kills, torn_after_first=True)
    # (how many processes found a finished checkpoint depends on when the asynchronous
    # writes completed; a write cut short leaves an orbax tmp dir, never a checkpoint)
    assert {k: got[k] for k in ("kills", "exact", "lost", "duplicated")} == \
        {"kills": 3, "exact": True, "lost": 0, "duplicated": 0}
    assert got["resumes"] >= 1


def random_kills(rng: random.Random, steps: int, n: int):
    """``n`` kill points at increasing steps: (phase, step, delay into a checkpoint write).

    A step on the evaluation grid may be killed inside its evaluation, one on the
    checkpoint grid while its checkpoint is written, any step right after it ran.
    """
    kills = []
    for at in sorted(rng.sample(range(1, steps), n)):
        phases = ["step"] + ["eval"] * (at % EVAL_EVERY == 0) + ["ckpt"] * (at % CKPT_EVERY == 0)
        phase = rng.choice(phases)
        kills.append((phase, at, round(rng.uniform(0.0, 0.05), 3) if phase == "ckpt" else 0.0))
    return kills


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["odm", "doge", "uniform"])
def test_random_kill_points_resume_exactly(env, tmp_path, mixer):
    kills = random_kills(random.Random(f"fault-{mixer}"), 24, 8)
    got = run_chain(env, tmp_path, mixer, 24, kills)
    print(f"FAULT {mixer}: {len(kills)} kill points {kills} -> {got}")
    assert got["kills"] == len(kills) == 8
    assert got["exact"] and got["lost"] == 0 and got["duplicated"] == 0
