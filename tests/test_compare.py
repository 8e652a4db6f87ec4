"""mixjax compare: statistics vs hand computation, config-hash reuse, refusals (exit 2), and one
end-to-end grid (2 configs x 2 seeds of a micro model on mixpile-tiny)."""

import json
import math
import pathlib
import shutil

import numpy as np
import pytest

from mixjax.cli import main as mixjax_main
from mixjax.compare import runs as runs_lib
from mixjax.compare import stats
from mixjax.compare.cli import compare

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNIFORM = str(ROOT / "configs" / "lm_tiny_uniform.py")
GROUPDRO = str(ROOT / "configs" / "lm_tiny_groupdro.py")
MICRO = ["train.steps=3", "model.d_model=16", "model.num_layers=1", "model.num_heads=2", "data.seq_len=16",
         "data.batch_size=8", "eval.num_seqs=2", "eval.batch_size=16", "train.eval_every=0",
         "train.ckpt_every=0", "optim.warmup_steps=1"]
E2E = ["data.domains=('code', 'legal', 'news')"]


# ---------------------------------------------------------------- statistics by hand

def test_mean_and_standard_error_by_hand():
    x = [10.0, 12.0, 17.0]
    m = (10 + 12 + 17) / 3                                   # 13
    s = math.sqrt(((10 - m) ** 2 + (12 - m) ** 2 + (17 - m) ** 2) / 2)   # sqrt(13)
    r = stats.mean_se(x)
    assert r.mean == pytest.approx(13.0) and r.se == pytest.approx(s / math.sqrt(3)) and r.n == 3
    assert r.fmt() == "13.000 ± 2.082"
    one = stats.mean_se([5.0])
    assert one.mean == 5.0 and math.isnan(one.se) and one.fmt() == "5.000"


def test_paired_t_interval_by_hand():
    method, base = [20.0, 21.0, 19.5, 22.0], [21.0, 21.5, 21.0, 22.5]
    d = [-1.0, -0.5, -1.5, -0.5]                             # method - baseline, per seed
    mean = sum(d) / 4                                        # -0.875
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)      # 0.4787
    t975_3 = 3.182446305284263                               # Student t, 3 dof, 97.5% (tables)
    iv = stats.paired_interval(method, base)
    assert iv.mean == pytest.approx(mean)
    assert iv.low == pytest.approx(mean - t975_3 * sd / 2) and iv.high == pytest.approx(mean + t975_3 * sd / 2)
    assert iv.below_zero and not iv.above_zero               # high = -0.113 < 0
    # the unpaired view would not separate them: the pairing is what removes the seed noise
    assert stats.mean_se(method).mean + 2 * stats.mean_se(method).se > stats.mean_se(base).mean
    assert math.isnan(stats.paired_interval([1.0], [2.0]).low)
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_interval([1.0, 2.0], [1.0])


def test_time_averaged_weights_by_hand():
    # w0 on steps [0, 10), w1 on [10, 40) of 40
    avg = stats.time_averaged([0, 10], [[0.5, 0.5], [0.2, 0.8]], 40)
    np.testing.assert_allclose(avg, [(0.5 * 10 + 0.2 * 30) / 40, (0.5 * 10 + 0.8 * 30) / 40])


# ---------------------------------------------------------------- reuse keyed by the config hash

def test_grid_reuses_finished_runs_and_never_a_changed_config(tmp_path, monkeypatch):
    from mixjax.train import loop
    calls = []

    def fake_train(cfg, resume=False):   # writes what a finished run leaves behind
        calls.append((cfg.name, cfg.train.seed, resume))
        d = pathlib.Path(cfg.train.run_dir)
        d.mkdir(parents=True, exist_ok=True)
        from mixjax import config as config_lib
        (d / "config.json").write_text(config_lib.to_json(cfg))
        (d / "eval.jsonl").write_text(json.dumps({"step": cfg.train.steps}) + "\n")
        return loop.RunResult(d, cfg.train.steps, False, None, {}, None)

    monkeypatch.setattr(loop, "train", fake_train)
    grid = runs_lib.plan_grid([UNIFORM], 2, MICRO, tmp_path)
    assert [r.seed for r in grid] == [0, 1] and grid[0].hash != grid[1].hash   # the seed is in the hash
    assert all(r.cfg.train.seed == r.cfg.data.seed == r.seed for r in grid)
    assert runs_lib.run_grid(grid, progress=False) == {"reused": 0, "trained": 2, "resumed": 0}
    again = runs_lib.plan_grid([UNIFORM], 2, MICRO, tmp_path)
    assert [r.run_dir for r in again] == [r.run_dir for r in grid]
    assert runs_lib.run_grid(again, progress=False) == {"reused": 2, "trained": 0, "resumed": 0}
    changed = runs_lib.plan_grid([UNIFORM], 2, MICRO + ["optim.lr=0.001"], tmp_path)
    assert not {r.run_dir for r in changed} & {r.run_dir for r in grid}
    assert runs_lib.run_grid(changed, progress=False)["trained"] == 2
    # an interrupted run (config.json, no final evaluation, no finished marker) is resumed,
    # not restarted
    (changed[0].run_dir / "eval.jsonl").unlink()
    (changed[0].run_dir / "finished.json").unlink()
    assert runs_lib.run_grid(changed, progress=False) == {"reused": 1, "trained": 0, "resumed": 1}
    assert calls[-1] == ("lm_tiny_uniform", 0, True)
    # progress and run_dir do not change results, so they do not change the hash
    cfg = grid[0].cfg
    h = runs_lib.config_hash(cfg)
    cfg.train.progress = not cfg.train.progress
    cfg.train.run_dir = "elsewhere"
    assert runs_lib.config_hash(cfg) == h


# ---------------------------------------------------------------- bad input: one message, exit 2

def test_bad_input_exits_2_before_training(tmp_path, capsys, monkeypatch):
    from mixjax.train import loop
    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("must not train"))
    out = tmp_path / "out"
    sets = sum((["--set", s] for s in MICRO), [])
    assert mixjax_main(["compare", UNIFORM, "--seeds", "0", "--out", str(out)] + sets) == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err
    assert mixjax_main(["compare", UNIFORM, GROUPDRO, "--seeds", "1", "--baseline", "nope",
                        "--out", str(out)] + sets) == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'nope'" in err and "lm_tiny_uniform, lm_tiny_groupdro" in err
    assert mixjax_main(["compare", "--runs", str(tmp_path), "--out", str(out)]) == 2
    assert f"{str(tmp_path)!r} is not a run directory" in capsys.readouterr().err
    longer = tmp_path / "configs" / "longer.py"    # a config with another budget
    longer.parent.mkdir()
    longer.write_text("from configs.lm_tiny_uniform import get_config as base\n\n\ndef get_config():\n"
                      "    cfg = base()\n    cfg.name = 'longer'\n    cfg.train.steps = 7\n    return cfg\n")
    shutil.copy(UNIFORM, longer.parent / "lm_tiny_uniform.py")
    no_steps = sum((["--set", s] for s in MICRO if not s.startswith("train.steps")), [])
    assert mixjax_main(["compare", UNIFORM, str(longer), "--seeds", "1", "--out", str(out)] + no_steps) == 2
    err = capsys.readouterr().err
    assert "runs differ in token budget" in err and "longer (seed 0)" in err
    assert not out.exists()


# ---------------------------------------------------------------- end to end (real training)

@pytest.fixture(scope="module")
def grid_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    res = compare([UNIFORM, GROUPDRO], seeds=2, overrides=MICRO + E2E, out=out, progress=False)
    return out, res


def test_end_to_end_table_plots_and_stats(grid_result):
    out, res = grid_result
    md = (out / "results.md").read_text()
    assert "Baseline: **lm_tiny_uniform**" in md and "| lm_tiny_groupdro | 2 |" in md
    assert "of 3 domains" in md
    for name in ("results.csv", "ppl_validation.png", "ppl_test.png", "weights.png", "loss.png",
                 "loss_domains.png"):
        assert (out / name).stat().st_size > 0, name
    recs = {(r.method, r.seed): r for r in res["records"]}
    s = res["summary"]["methods"]["lm_tiny_groupdro"]
    # the table is the statistics of the runs' own final evaluations
    for split, key in (("validation", "val"), ("test", "test")):
        g = [getattr(recs[("lm_tiny_groupdro", k)], key)["ppl/code"] for k in (0, 1)]
        b = [getattr(recs[("lm_tiny_uniform", k)], key)["ppl/code"] for k in (0, 1)]
        assert s["cells"][(split, "code")].mean == pytest.approx(np.mean(g))
        assert s["cells"][(split, "code")].se == pytest.approx(np.std(g, ddof=1) / np.sqrt(2))
        assert s["diff"][(split, "code")].mean == pytest.approx(np.mean(np.subtract(g, b)))
    # same eval sets for every run, recorded in run_info.json
    sums = {json.loads((r.run_dir / "run_info.json").read_text())["eval_sets"]["sha256"] for r in recs.values()}
    assert len(sums) == 1 and None not in sums
    # a second compare reuses all four runs
    again = compare([UNIFORM, GROUPDRO], seeds=2, overrides=MICRO + E2E, out=out, progress=False)
    assert again["counts"] == {"reused": 4, "trained": 0, "resumed": 0}


def test_runs_with_different_eval_sets_are_refused(grid_result, tmp_path, capsys):
    out, res = grid_result
    a, b = (r.run_dir for r in res["records"][:2])
    other = tmp_path / "other_run"
    shutil.copytree(b, other)
    info = json.loads((other / "run_info.json").read_text())
    info["eval_sets"]["sha256"] = "0" * 64          # as if evaluated on other data
    (other / "run_info.json").write_text(json.dumps(info))
    dest = tmp_path / "table"
    assert mixjax_main(["compare", "--runs", str(a), str(other), "--out", str(dest), "--no-test"]) == 2
    err = capsys.readouterr().err
    assert "differ in validation eval sets" in err and str(other) in err and str(a) in err
    assert not (dest / "results.md").exists()
    # the same runs, untouched, tabulate fine from --runs
    assert mixjax_main(["compare", "--runs", str(a), str(b), "--out", str(dest), "--no-test",
                        "--no-progress"]) == 0
    assert (dest / "results.md").is_file()
    assert mixjax_main(["compare", "--runs", str(a), str(b), "--out", str(tmp_path / "t2"), "--baseline", "x"]) == 2
    assert "unknown baseline 'x'; methods in these runs: lm_tiny_uniform" in capsys.readouterr().err


# ---------------------------------------------------------------- absent domains: NaN, not 0

def test_absent_domain_is_nan_in_jsonl_and_has_no_tensorboard_point(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mixjax.train import metrics
    loss = metrics.absent_as_nan([2.5, 0.0, 3.0], [10, 0, 4])
    assert loss[0] == 2.5 and math.isnan(loss[1]) and loss[2] == 3.0
    w = metrics.MetricsWriter(tmp_path, ("a", "b", "c"))
    for step in (1, 2):
        rec = {"step": step, "loss": 1.0}
        rec.update(w.per_domain("loss", loss))
        rec.update(w.per_domain("count", [10, 0, 4]))
        w.write("metrics.jsonl", rec)
    w.close()
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["loss/b"] == "nan" and math.isnan(float(rows[0]["loss/b"])) and rows[0]["count/b"] == 0.0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "metrics/loss/a" in tags and "metrics/count/b" in tags
    assert "metrics/loss/b" not in tags       # no point at all, never a 0


def test_grid_runs_log_absent_domains_as_nan(grid_result):
    from mixjax.train import metrics
    out, res = grid_result
    for r in res["records"]:
        for row in metrics.read_jsonl(r.run_dir / "metrics.jsonl"):
            for d in r.domains:
                assert (row[f"count/{d}"] == 0) == (row[f"loss/{d}"] == "nan"), (r.run_dir, row)
