"""Crash-consistent logs: a torn last JSONL line and replayed steps after a crash.

A run that wrote records (and TensorBoard events) past its last checkpoint and
died in the middle of a line resumes, and every log then reads as one
uninterrupted run: the same records, scalars and weights as a run never stopped.
"""

import collections
import shutil

import pytest

from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from train_fakes import fake_data, tiny_config


def _config(run_dir, steps):
    cfg = tiny_config(run_dir, steps=steps, eval_every=2, ckpt_every=3)
    cfg.mixing.name = "groupdro"
    cfg.mixing.apply_to = "sampling"
    cfg.data.sampler = "stratified"
    # a schedule independent of train.steps: a 5-step run resumed to 6 is the 6-step run
    cfg.optim.decay, cfg.optim.warmup_steps = "constant", 0
    return cfg


def _strip(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def _scalars(run_dir):
    return collections.Counter((t, s, v) for t, s, v in
                               metrics_lib.read_tensorboard_scalars(run_dir / "tb")
                               if not t.endswith("tokens_per_s"))


def test_torn_line_and_replayed_steps_resume_as_one_run(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    cfg = _config(full, 6)
    loop.train(cfg, data=fake_data(cfg))
    cfg = _config(split, 5)
    loop.train(cfg, data=fake_data(cfg))
    # A crash after step 5's records and before checkpoint 5 completed, in the middle
    # of a metrics line: checkpoint 3 is the latest, steps 4-5 are in every log.
    shutil.rmtree(split / "checkpoints" / "5")
    with open(split / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 2.1')
    assert [r["step"] for r in metrics_lib.read_jsonl(split / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    cfg = _config(split, 6)
    loop.train(cfg, data=fake_data(cfg), resume=True)
    for name in metrics_lib.FILES:
        a, b = metrics_lib.read_jsonl(full / name), metrics_lib.read_jsonl(split / name)
        assert _strip(a) == _strip(b), name
    assert (split / "metrics.jsonl").read_text().endswith("}\n")
    sa, sb = _scalars(full), _scalars(split)
    assert sum(sa.values()) > 50 and sa == sb           # no step twice, none lost
    assert not list(split.glob("**/*.tmp"))


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(metrics_lib.LogFileError, match=r"metrics.jsonl:2: malformed"):
        metrics_lib.read_jsonl(path)
