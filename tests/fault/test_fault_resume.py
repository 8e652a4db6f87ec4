"""Resume: the run dir under another path, --resume on nothing, and a longer run that
keeps its LR schedule unless asked to rebuild it."""

import shutil

import numpy as np

from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from mixjax.core import state as state_lib
from train_fakes import fake_data, tiny_config


def test_moved_run_dir_resumes_under_a_relative_path(tmp_path, monkeypatch, capsys, recwarn):
    cfg = tiny_config(tmp_path / "first", steps=2, eval_every=0, ckpt_every=2)
    loop.train(cfg, data=fake_data(cfg))
    shutil.copytree(tmp_path / "first", tmp_path / "moved")     # moved or copied elsewhere
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("moved", steps=3, eval_every=0, ckpt_every=3)
    result = loop.train(cfg, data=fake_data(cfg), resume=True)
    assert result.steps_done == 3
    assert "resumed from step 2 (" in capsys.readouterr().err
    assert [r["step"] for r in metrics_lib.read_jsonl(tmp_path / "moved" / "metrics.jsonl")] \
        == [1, 2, 3]
    # `mixjax eval` of it: no orbax "Sharding info not provided" warning on the load
    recwarn.clear()
    assert loop.evaluate_run(tmp_path / "moved", data=fake_data(cfg))["step"] == 3
    assert not [w for w in recwarn if "Sharding info not provided" in str(w.message)]


def test_resume_of_a_missing_run_dir_says_so(tmp_path):
    cfg = tiny_config(tmp_path / "typo", steps=2)
    notes = loop.check_run_dir(cfg, resume=True)
    assert notes == [f"--resume: run dir {str(tmp_path / 'typo')!r} does not exist; "
                     "starting a new run"]
    assert not (tmp_path / "typo").exists()


def test_longer_resume_keeps_the_lr_schedule_unless_rebuilt(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run", steps=3, eval_every=0, ckpt_every=3)
    cfg.optim.warmup_steps = 1
    loop.train(cfg, data=fake_data(cfg))
    cfg = tiny_config(tmp_path / "run", steps=5, eval_every=0, ckpt_every=5)
    cfg.optim.warmup_steps = 1
    loop.train(cfg, data=fake_data(cfg), resume=True)
    err = capsys.readouterr().err
    assert "train.steps 3 -> 5: the LR schedule keeps its original length (3 steps; pass " \
           "--rebuild-schedule to stretch it over the new steps)" in err
    lrs = [r["lr"] for r in metrics_lib.read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    kept = state_lib.lr_schedule(cfg.optim, 3)
    np.testing.assert_allclose(lrs, [float(kept(s)) for s in range(5)], rtol=1e-6)
    assert loop.load_run_config(tmp_path / "run").optim.schedule_steps == 3
    # Extending again keeps the first run's length; --rebuild-schedule stretches it.
    again = tiny_config(tmp_path / "run", steps=9)
    again.optim.warmup_steps = 1
    assert loop.check_run_dir(again, resume=True)[0].startswith("train.steps 5 -> 9: the LR "
                                                                "schedule keeps its original "
                                                                "length (3 steps")
    rebuilt = tiny_config(tmp_path / "run", steps=9)
    rebuilt.optim.warmup_steps = 1
    assert loop.check_run_dir(rebuilt, resume=True, rebuild_schedule=True) == [
        "LR schedule rebuilt over train.steps=9 (was 3 steps; --rebuild-schedule)"]
    assert rebuilt.optim.schedule_steps is None

