"""Damaged checkpoints: detected on restore, reported in one line, moved aside, and the
previous intact checkpoint is used; ``resume_from`` picks one.

One run (checkpoints 2 and 4) is trained once; each damage case works on a copy of
its checkpoints. One end-to-end case resumes past a damaged checkpoint and ends
bit-for-bit equal to the uninterrupted run.
"""

import shutil

import jax
import numpy as np
import pytest

from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from train_fakes import fake_data, tiny_config


def _config(run_dir, steps):
    cfg = tiny_config(run_dir, steps=steps, eval_every=0, ckpt_every=2)
    cfg.mixing.name = "groupdro"
    cfg.mixing.apply_to = "sampling"
    cfg.data.sampler = "stratified"
    # a schedule independent of train.steps: a 4-step run resumed to 6 is the 6-step run
    cfg.optim.decay, cfg.optim.warmup_steps = "constant", 0
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir with checkpoints 2 and 4 of a 4-step run, its Trainer's abstract state)."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = _config(root / "run", 4)
    loop.train(cfg, data=fake_data(cfg))
    trainer = loop.Trainer(cfg, fake_data(cfg))
    return root / "run", jax.tree.map(ckpt_lib._abstract, trainer.initial_state)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _largest(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated data file": lambda c: _truncate(_largest(c / "state" / "ocdbt.process_0" / "d")),
    "host/ deleted": lambda c: shutil.rmtree(c / "host"),
    "state/ deleted": lambda c: shutil.rmtree(c / "state"),
    "_METADATA deleted": lambda c: (c / "state" / "_METADATA").unlink(),
    "host JSON truncated": lambda c: _truncate(c / "host" / "metadata"),
    "OCDBT manifests deleted": lambda c: [p.unlink() for p in c.rglob("manifest.ocdbt")],
    "host JSON edited": lambda c: (c / "host" / "metadata").write_text(
        (c / "host" / "metadata").read_text().replace('"step": 4', '"step": 3')),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_previous(trained, tmp_path, damage):
    run, abstract = trained
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", ckpts)
    DAMAGE[damage](ckpts / "4")
    ck = ckpt_lib.Checkpointer(ckpts)
    lines = []
    try:
        step, state, host, _ = loop._restore_good_checkpoint(ck, abstract, None, lines.append)
    finally:
        ck.close()
    assert step == 2 and host["step"] == 2 and int(state.step) == 2
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("checkpoint 4 is damaged: ")
    assert lines[0].endswith(f"; resuming from 2 (moved to {tmp_path / 'checkpoints_damaged' / '4'})")
    assert (tmp_path / "checkpoints_damaged" / "4").is_dir()       # kept, not deleted
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["2"]


def test_resume_from_moves_newer_checkpoints_aside(trained, tmp_path):
    run, abstract = trained
    shutil.copytree(run / "checkpoints", tmp_path / "checkpoints")
    ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
    lines = []
    try:
        with pytest.raises(ckpt_lib.CheckpointError, match=r"--resume-from 3: no checkpoint 3 .*"
                                                            r"have \[2, 4\]"):
            loop._restore_good_checkpoint(ck, abstract, 3, lines.append)
        step, _, host, _ = loop._restore_good_checkpoint(ck, abstract, 2, lines.append)
    finally:
        ck.close()
    assert step == 2 and host["step"] == 2
    assert lines == [f"checkpoint 4 is newer than --resume-from 2: moved to "
                     f"{tmp_path / 'checkpoints_damaged' / '4'}"]


def test_resume_past_a_damaged_checkpoint_equals_uninterrupted_run(trained, tmp_path, capsys):
    run, _ = trained
    shutil.copytree(run, tmp_path / "split")
    _truncate(_largest(tmp_path / "split" / "checkpoints" / "4" / "state" / "ocdbt.process_0"
                       / "d"))
    cfg = _config(tmp_path / "split", 6)
    resumed = loop.train(cfg, data=fake_data(cfg), resume=True)
    err = capsys.readouterr().err
    assert "checkpoint 4 is damaged: " in err and "resuming from 2" in err
    assert f"resumed from step 2 ({tmp_path / 'split' / 'checkpoints' / '2'})" in err
    cfg = _config(tmp_path / "full", 6)
    full = loop.train(cfg, data=fake_data(cfg))
    for key in ("params", "opt_state", "mix_state"):
        a = jax.tree.leaves(getattr(full.state, key))
        b = jax.tree.leaves(getattr(resumed.state, key))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), key
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]
    for name in metrics_lib.FILES:
        assert strip(metrics_lib.read_jsonl(tmp_path / "full" / name)) == \
            strip(metrics_lib.read_jsonl(tmp_path / "split" / name)), name


@pytest.mark.parametrize("damage", ["truncated data file", "host/ deleted"])
def test_damaged_checkpoint_fallback_prints_one_clean_line(trained, tmp_path, capfd, damage):
    """No asyncio/orbax tracebacks, no TensorStore spec or bound-method repr: one line that
    names the checkpoint and the reason, whatever the damage."""
    run, _ = trained
    shutil.copytree(run, tmp_path / "split")
    DAMAGE[damage](tmp_path / "split" / "checkpoints" / "4")
    cfg = _config(tmp_path / "split", 6)
    loop.train(cfg, data=fake_data(cfg), resume=True)
    import gc
    gc.collect()                        # what a failed read leaves behind reports now, if ever
    out, err = capfd.readouterr()
    text = out + err
    for noise in ("Traceback", "Event loop is closed", "<bound method", "pybind11",
                  "Exception ignored", "TensorStore({"):
        assert noise not in text, (noise, text[:3000])
    lines = [line for line in err.splitlines() if " is damaged: " in line]
    assert len(lines) == 1, err
    moved = tmp_path / "split" / "checkpoints_damaged" / "4"
    assert lines[0].startswith("checkpoint 4 is damaged: ") and \
        lines[0].endswith(f"; resuming from 2 (moved to {moved})")
    reason = lines[0][len("checkpoint 4 is damaged: "):lines[0].index("; resuming from 2")]
    assert len(reason) > 20 and ("Error reading" in reason or "'host'" in reason
                                 or '"host"' in reason), reason
    if damage == "truncated data file":   # names the file it could not read
        assert str(tmp_path / "split" / "checkpoints" / "4" / "state") in reason, reason


def test_export_of_a_damaged_checkpoint_is_one_clean_error(trained, tmp_path, capfd):
    from mixjax import cli
    run, _ = trained
    shutil.copytree(run, tmp_path / "run")
    # every data file: export reads the parameters only, and which OCDBT file holds them
    # (rather than the optimiser state) depends on the order of the concurrent writes
    for data_file in (tmp_path / "run" / "checkpoints" / "4" / "state").rglob("d/*"):
        _truncate(data_file)
    assert cli.main(["export", str(tmp_path / "run"), "--format", "safetensors"]) == 2
    import gc
    gc.collect()
    out, err = capfd.readouterr()
    for noise in ("Traceback", "Event loop is closed", "<bound method", "Exception ignored"):
        assert noise not in out + err, (noise, err[:3000])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: run dir {str(tmp_path / 'run')!r}: checkpoint 4 cannot be read: "), err
    assert str(tmp_path / "run" / "checkpoints" / "4" / "state") in lines[0]
