"""One run identity (mixjax/run_identity.py): the callers that train a config or reuse its
finished run (compare, the `mix` phases and shared baselines, search's target runs, DG
sweep jobs, and the loop's resume check) agree on which keys change a result.

A result-neutral change (``train.log_every``) reuses everywhere; a result change
(``optim.lr``) reuses nowhere.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from mixjax import config as config_lib
from mixjax import run_identity
from mixjax.train import loop
from train_fakes import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNIFORM = str(ROOT / "configs" / "lm_tiny_uniform.py")
MICRO = ["train.steps=3", "model.d_model=16", "model.num_layers=1", "model.num_heads=2",
         "data.seq_len=16", "data.batch_size=8", "eval.num_seqs=2", "train.eval_every=0",
         "train.ckpt_every=0", "optim.warmup_steps=1"]
NEUTRAL = "train.log_every=7"
RESULT = "optim.lr=0.001"


def _copy(cfg, *sets):
    c = config_lib.from_dict(config_lib.to_dict(cfg))
    for item in sets:
        config_lib.apply_override(c, item)
    return config_lib.validate(c)


@pytest.fixture
def fake_train(monkeypatch):
    """loop.train replaced by one that leaves what a finished run leaves behind."""
    calls = []

    def train(cfg, resume=False, data=None, **_):
        calls.append((cfg.train.run_dir, resume))
        d = pathlib.Path(cfg.train.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(config_lib.to_json(cfg))
        (d / "eval.jsonl").write_text(json.dumps({"step": cfg.train.steps}) + "\n")
        return loop.RunResult(d, cfg.train.steps, False, None, {"loss_avg": 1.0}, None)

    monkeypatch.setattr(loop, "train", train)
    return calls


def test_neutral_keys_are_declared_once_and_change_no_hash():
    cfg = config_lib.load(UNIFORM, MICRO)
    h = run_identity.config_hash(cfg)
    for key in run_identity.NEUTRAL_KEYS:
        assert key == "name" or key.split(".")[0] in {"train", "data"}, key
    for item in ("name=other", "train.run_dir=elsewhere", "train.progress=False", NEUTRAL,
                 "train.ckpt_every=5", "train.keep_ckpts=4", "train.trackers=[]",
                 "data.cache_dir=/tmp/x"):
        assert run_identity.config_hash(_copy(cfg, item)) == h, item
    for item in (RESULT, "train.seed=1", "data.seed=3", "train.steps=4", "train.eval_every=1",
                 "eval.batch_size=3", "mesh.data=-1", "mixing.name=temperature"):
        assert run_identity.config_hash(_copy(cfg, item)) != h, item
    # every former copy is this one function
    from mixjax import compare, workflows
    from mixjax.compare import runs
    assert compare.config_hash is runs.config_hash is workflows.config_hash \
        is run_identity.config_hash


def test_log_every_reuses_and_lr_retrains_in_every_caller(tmp_path, fake_train, monkeypatch):
    from mixjax import workflows
    from mixjax.compare import runs
    from mixjax.search import phases, settings as search_settings

    # 1. compare: the same run dir, reused
    grid = runs.plan_grid([UNIFORM], 1, MICRO, tmp_path / "cmp")
    assert runs.run_grid(grid, progress=False)["trained"] == 1
    neutral = runs.plan_grid([UNIFORM], 1, MICRO + [NEUTRAL], tmp_path / "cmp")
    assert neutral[0].run_dir == grid[0].run_dir
    assert runs.run_grid(neutral, progress=False) == {"reused": 1, "trained": 0, "resumed": 0}
    changed = runs.plan_grid([UNIFORM], 1, MICRO + [RESULT], tmp_path / "cmp")
    assert changed[0].run_dir != grid[0].run_dir

    # 2. mix: the shared baseline's dir is keyed by the same hash; a phase is reused
    base = config_lib.load(UNIFORM, MICRO)
    phase = lambda cfg: workflows._phase_config(cfg, tmp_path / "p", 0, "b", baseline="natural")
    out = tmp_path / "mix"
    b0, b1, b2 = phase(base), phase(_copy(base, NEUTRAL)), phase(_copy(base, RESULT))
    assert workflows.baseline_dir(out, b0) == workflows.baseline_dir(out, b1) \
        != workflows.baseline_dir(out, b2)
    assert workflows.baseline_dir(out, b0).name.endswith(run_identity.config_hash(b0)[:16])

    class Data:
        domains = ("a", "b")
    monkeypatch.setattr(workflows, "_data_for", lambda cfg, cache: Data())
    for c in (b0, b1, b2):
        c.train.run_dir = str(workflows.baseline_dir(out, c))
    n = len(fake_train)
    rec = workflows._train(b0, {}, lambda s: None, "baseline", 1, 0)
    assert workflows._train(b1, {}, lambda s: None, "baseline", 1, 0) == rec
    assert len(fake_train) == n + 1                    # log_every: reused
    workflows._train(b2, {}, lambda s: None, "baseline", 1, 0)
    assert len(fake_train) == n + 2                    # lr: trained

    # 3. search: a target run is reused; another config in its dir is refused
    t = config_lib.load(UNIFORM, MICRO)
    run_dir = tmp_path / "search" / "target" / "uniform" / "seed0"
    ev = phases.train_target(t, run_dir, 0, "uniform", lambda s: None, "uniform")
    n = len(fake_train)
    assert phases.train_target(_copy(t, NEUTRAL), run_dir, 0, "uniform", lambda s: None,
                                  "uniform") == ev
    assert len(fake_train) == n
    with pytest.raises(search_settings.SearchError, match="another config"):
        phases.train_target(_copy(t, RESULT), run_dir, 0, "uniform", lambda s: None, "uniform")
    # search.json compares the same identity dicts
    assert phases.identity_of_saved(config_lib.to_dict(_copy(t, NEUTRAL))) == \
        run_identity.identity_dict(t)

    # 4. the loop: resuming with another log_every is allowed, with another lr it is not
    cfg = tiny_config(tmp_path / "loop", steps=2)
    loop.prepare_run_dir(cfg, resume=False)
    loop.check_run_dir(_copy(cfg, NEUTRAL), resume=True)
    with pytest.raises(loop.RunDirError, match="optim.lr"):
        loop.check_run_dir(_copy(cfg, RESULT), resume=True)
    assert set(run_identity.NEUTRAL_KEYS) <= set(loop.RESUMABLE_CHANGES)


def test_dg_job_identity_and_marker(tmp_path):
    from mixjax.dg import config as dg_config
    from mixjax.dg import sweep
    cfg = dg_config.SweepConfig()
    job = sweep.Job("ColoredMNIST", "erm", (0,), 0, 0, ())
    h = job.hash(cfg)
    # neutral: the output dir and the vmap switch are not in the job's identity
    import dataclasses
    assert job.hash(dataclasses.replace(cfg, vmap=True, output_dir="elsewhere")) == h
    assert job.hash(dataclasses.replace(cfg, steps=cfg.steps + 1)) != h
    d = sweep.write_job(tmp_path, cfg, job, [{"step": 0}])
    assert d.name == h and run_identity.is_finished(d)   # the dir's name is the identity
    assert (d / "done").read_text() == "done"            # DomainBed's marker
    (d / "done").unlink()
    assert not run_identity.is_finished(d)


def test_markers_of_older_runs_are_read(tmp_path, fake_train):
    cfg = tiny_config(tmp_path / "old", steps=2)
    d = pathlib.Path(cfg.train.run_dir)
    d.mkdir()
    (d / "config.json").write_text(config_lib.to_json(cfg))
    (d / "result.json").write_text(json.dumps({"eval": {"loss_avg": 2.0}}))
    rec, reused = run_identity.train_or_reuse(_copy(cfg, NEUTRAL), d, lambda resume: 1 / 0)
    assert reused and rec == {"eval": {"loss_avg": 2.0}}
    assert run_identity.read_marker(d)["config_hash"] == run_identity.config_hash(cfg)
    # an older run of another config is refused, naming the dir
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(config_lib.to_json(cfg))
    (other / "result.json").write_text("{}")
    with pytest.raises(run_identity.RunIdentityError, match=str(other)):
        run_identity.train_or_reuse(_copy(cfg, RESULT), other, lambda resume: 1 / 0)


def test_run_identity_sits_low():
    from test_import_graph import import_graph
    deps = import_graph()["mixjax.run_identity"]
    assert deps <= {"mixjax.config", "mixjax.errors", "mixjax.atomic"}, deps


def test_a_grid_run_named_by_an_older_hash_is_adopted(tmp_path, fake_train):
    from mixjax.compare import runs
    grid = runs.plan_grid([UNIFORM], 1, MICRO, tmp_path)
    assert runs.run_grid(grid, progress=False)["trained"] == 1
    new = grid[0].run_dir
    older = new.parent / (new.name.rsplit("-", 1)[0] + "-0123456789ab")   # an older hash
    new.rename(older)
    (older / "finished.json").unlink()          # written before there was a marker
    n = len(fake_train)
    assert runs.run_grid(runs.plan_grid([UNIFORM], 1, MICRO, tmp_path), progress=False) == \
        {"reused": 1, "trained": 0, "resumed": 0}
    assert len(fake_train) == n and new.is_dir() and not older.exists()
    # a sibling of another config is never adopted
    other = runs.plan_grid([UNIFORM], 1, MICRO + [RESULT], tmp_path)
    assert runs.run_grid(other, progress=False)["trained"] == 1 and new.is_dir()
