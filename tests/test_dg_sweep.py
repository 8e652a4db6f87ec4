"""`mixjax dg sweep` / `mixjax dg table` end to end on the tiny synthetic config."""

import json
import pathlib

import pytest

from mixjax.cli import main
from mixjax.dg import config as C

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")


def records(run_dir):
    return [json.loads(line) for f in sorted(run_dir.glob("*/results.jsonl")) for line in f.read_text().splitlines()]


def test_sweep_table_resume_and_vmap_equivalence(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", "steps=12", "--set", "vmap=True",
                 "--no-table"]) == 0
    assert "dg sweep" in (err := capsys.readouterr().err) and "24/24" in err  # per-job progress
    recs = records(run)
    # 1 algorithm x (3 single + 3 pair test-env sets) x 2 hparams x 2 trials, records at steps 0, 10, 11
    assert len(recs) == 24 * 3
    assert sorted({r["step"] for r in recs}) == [0, 10, 11]
    assert all(0.0 <= r["env0_in_acc"] <= 1.0 for r in recs)
    assert {r["hparams"]["batch_size"] for r in recs} == {8}  # hparam_overrides applied
    assert len({r["hparams"]["lr"] for r in recs}) > 1  # hparams seed 1 draws a random lr
    info = json.loads((run / "run_info.json").read_text())   # what produced the sweep
    assert info["kind"] == "dg_sweep" and info["algorithms"] == ["erm"] and info["libraries"]["jax"]

    assert main(["dg", "table", str(run)]) == 0
    md = (run / "results.md").read_text()
    assert md.count("| erm |") == 6  # one row per selection method, in the dataset and Averages tables
    assert "X" not in md  # pairs were run, so leave-one-domain-out has numbers
    assert (run / "results.csv").read_text().count("\n") == 1 + 3 * 3

    # rerunning the same sweep skips finished jobs
    capsys.readouterr()
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", "steps=12", "--no-table"]) == 0
    assert "0 jobs to run (24 done)" in capsys.readouterr().out
    assert len(records(run)) == 24 * 3

    # the same jobs run one by one (no vmap) give the same numbers
    solo = tmp_path / "solo"
    assert main(["dg", "sweep", TINY, "--run-dir", str(solo), "--set", "steps=12", "--set", "vmap=False",
                 "--set", "test_envs=single", "--set", "n_hparams=1", "--set", "n_trials=1", "--no-table"]) == 0
    key = lambda r: (tuple(r["args"]["test_envs"]), r["args"]["hparams_seed"], r["args"]["trial_seed"], r["step"])  # noqa: E731
    batched = {key(r): r for r in recs}
    for r in records(solo):
        b = batched[key(r)]
        assert r["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert all(r[k] == pytest.approx(b[k], abs=1e-6) for k in r if k.endswith("_acc"))


def test_bad_config_override_names_the_key(capsys, tmp_path):
    assert main(["dg", "sweep", TINY, "--run-dir", str(tmp_path), "--set", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err
    with pytest.raises(C.ConfigError, match="hparam_overrides.rho"):
        C.load(TINY, ["hparam_overrides.rho=0.1"])  # erm has no rho
    with pytest.raises(C.ConfigError, match="'irn'"):
        C.load(TINY, ["algorithms=[erm,irn]"])
    assert C.load(TINY, ["algorithms=[erm,irm]"]).algorithms == ("erm", "irm")  # bare-word lists
    assert C.load(TINY, ["algorithms=erm,vrex", "model.cnn_widths=[8,8,8,8]"]).algorithms == ("erm", "vrex")
    assert not any(tmp_path.iterdir())  # nothing written before the error


def test_table_on_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["dg", "table", str(tmp_path / "nope")]) == 2
    assert "results.jsonl" in capsys.readouterr().err
