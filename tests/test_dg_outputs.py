"""DomainBed-compatible sweep outputs: per-job md5 directories, record schema, ``done``,
stale-result protection, per-job data seeds, LaTeX and Averages tables.

The DomainBed side is restated from facebookresearch/DomainBed: ``scripts/sweep.py`` (job
directory = md5 of ``json.dumps(train_args, sort_keys=True)``), ``scripts/train.py`` (argument
names, record fields, ``done``), ``lib/reporting.py`` (``load_records``,
``get_grouped_records``) and ``model_selection.py`` (``IIDAccuracySelectionMethod``).
"""

import collections
import hashlib
import itertools
import json
import os
import pathlib

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.dg import report, selection

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")
SMALL = ["--set", "steps=4", "--set", "checkpoint_freq=2", "--set", "n_hparams=2", "--set", "n_trials=2",
         "--set", "test_envs=single", "--set", "vmap=False", "--no-table"]

# scripts/train.py's argparse names (vars(args) is each record's "args")
DOMAINBED_TRAIN_ARGS = {"data_dir", "dataset", "algorithm", "task", "hparams", "hparams_seed", "trial_seed", "seed",
                        "steps", "checkpoint_freq", "test_envs", "output_dir", "holdout_fraction",
                        "uda_holdout_fraction", "skip_model_save", "save_model_every_checkpoint"}


def domainbed_load_records(path):
    """reporting.load_records: every subdir's results.jsonl, each line parsed without its newline."""
    records = []
    for subdir in os.listdir(path):
        results_path = os.path.join(path, subdir, "results.jsonl")
        try:
            with open(results_path) as f:
                for line in f:
                    records.append(json.loads(line[:-1]))
        except IOError:
            pass
    return records


def domainbed_iid_sweep_accs(records):
    """get_grouped_records + IIDAccuracySelectionMethod.sweep_acc, DomainBed's key accesses."""
    groups = collections.defaultdict(list)
    for r in records:
        for test_env in r["args"]["test_envs"]:
            groups[(r["args"]["trial_seed"], r["args"]["dataset"], r["args"]["algorithm"], test_env)].append(r)
    out = {}
    for g, recs in groups.items():
        by_hp = collections.defaultdict(list)
        for r in recs:
            by_hp[r["args"]["hparams_seed"]].append(r)
        accs = []
        for run in by_hp.values():
            tests = [r for r in run if len(r["args"]["test_envs"]) == 1]
            steps = []
            for r in tests:
                te = r["args"]["test_envs"][0]
                val_keys = []
                for i in itertools.count():
                    if f"env{i}_out_acc" not in r:
                        break
                    if i != te:
                        val_keys.append(f"env{i}_out_acc")
                steps.append({"val_acc": np.mean([r[k] for k in val_keys]), "test_acc": r[f"env{te}_in_acc"]})
            if steps:
                accs.append(max(steps, key=lambda s: s["val_acc"]))
        if accs:
            out[g] = sorted(accs, key=lambda a: a["val_acc"])[::-1][0]["test_acc"]
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("dg") / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), *SMALL]) == 0
    return run


def test_job_dirs_are_md5_of_args_with_domainbed_records(sweep_dir):
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(job_dirs) == 3 * 2 * 2  # test envs x hparams seeds x trials
    for d in job_dirs:
        assert (d / "done").read_text() == "done"
        lines = (d / "results.jsonl").read_text().splitlines(keepends=True)
        assert len(lines) == 3  # steps 0, 2, 3
        recs = [json.loads(line) for line in lines]
        for line, r in zip(lines, recs):
            assert line == json.dumps(r, sort_keys=True) + "\n"  # DomainBed writes sorted keys
            assert DOMAINBED_TRAIN_ARGS <= set(r["args"])
            assert {"step", "epoch", "step_time", "hparams", "loss"} <= set(r)
            assert all(f"env{i}_{s}_acc" in r for i in range(3) for s in ("in", "out"))
            assert r["args"]["output_dir"] == str(d)
            assert r["hparams"] == r["args"]["mixjax"]["hparams"]
        args = dict(recs[0]["args"])
        del args["output_dir"]
        assert d.name == hashlib.md5(json.dumps(args, sort_keys=True).encode("utf-8")).hexdigest()
        assert [r["step"] for r in recs] == [0, 2, 3]
        assert recs[0]["args"]["steps"] == 4 and recs[0]["args"]["hparams"] == '{"batch_size": 8}'


def test_domainbed_reader_and_selection_agree_with_ours(sweep_dir):
    theirs = domainbed_load_records(sweep_dir)
    ours = report.load_records(sweep_dir)
    assert len(theirs) == len(ours) == 12 * 3
    accs = domainbed_iid_sweep_accs(theirs)
    assert len(accs) == 2 * 3  # trials x test envs
    for g, recs in selection.group_records(ours).items():
        assert selection.sweep_acc(recs, "training_domain")["test_acc"] == accs[g]


def test_changed_steps_refuse_and_job_set_extends(sweep_dir, capsys):
    config = (sweep_dir / "config.json").read_text()
    names = sorted(p.name for p in sweep_dir.iterdir())
    capsys.readouterr()
    assert main(["dg", "sweep", TINY, "--run-dir", str(sweep_dir), *SMALL, "--set", "steps=5"]) == 2
    err = capsys.readouterr().err
    assert "'steps'" in err and "steps=4" in err and "steps=5" in err
    assert main(["dg", "sweep", TINY, "--run-dir", str(sweep_dir), *SMALL, "--set", "model.mlp_width=8"]) == 2
    assert "model.mlp_width" in capsys.readouterr().err
    assert (sweep_dir / "config.json").read_text() == config  # never rewritten to misdescribe
    assert sorted(p.name for p in sweep_dir.iterdir()) == names

    # the same settings, one trial fewer: nothing to run, config.json still says 2 trials
    assert main(["dg", "sweep", TINY, "--run-dir", str(sweep_dir), *SMALL, "--set", "n_trials=1"]) == 0
    assert "0 jobs to run (12 done)" in capsys.readouterr().out
    assert json.loads((sweep_dir / "config.json").read_text())["n_trials"] == 2

    # a torn job (no done marker) is rerun, and more trials extend the sweep
    victim = next(p for p in sweep_dir.iterdir() if p.is_dir())
    (victim / "done").unlink()
    (victim / "results.jsonl").write_text('{"torn": ')
    assert main(["dg", "sweep", TINY, "--run-dir", str(sweep_dir), *SMALL, "--set", "n_trials=3"]) == 0
    out = capsys.readouterr().out
    assert "n_trials: 2 -> 3" in out and "7 jobs to run (11 done)" in out
    assert (victim / "done").exists() and len((victim / "results.jsonl").read_text().splitlines()) == 3
    assert json.loads((sweep_dir / "config.json").read_text())["n_trials"] == 3
    assert len(report.load_records(sweep_dir)) == 18 * 3
    assert {r["args"]["mixjax"]["dataset_seed"] for r in report.load_records(sweep_dir)} == {0}  # shared data


def test_per_job_dataset_seeds(tmp_path):
    from mixjax.dg import config as C

    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", "steps=2", "--set", "n_hparams=1",
                 "--set", "n_trials=1", "--set", "test_envs=single", "--set", "dataset.seeds=per_job",
                 "--no-table"]) == 0
    recs = domainbed_load_records(run)
    seeds = {r["args"]["mixjax"]["dataset_seed"] for r in recs}
    assert seeds == {r["args"]["seed"] for r in recs} and len(seeds) == 3
    with pytest.raises(C.ConfigError, match="dataset.seeds"):
        C.load(TINY, ["dataset.seeds=each"])


def _rec(dataset, alg, te, trial, acc, n_envs=2):
    r = {"args": {"dataset": dataset, "algorithm": alg, "test_envs": [te], "hparams_seed": 0, "trial_seed": trial},
         "step": 0}
    for i in range(n_envs):
        r[f"env{i}_in_acc"] = acc if i == te else 0.5
        r[f"env{i}_out_acc"] = acc
    return r


def test_averages_table_is_domainbeds_per_trial_mean(tmp_path, capsys):
    recs = [_rec("A", "erm", 0, 0, 0.6), _rec("A", "erm", 1, 0, 0.8), _rec("A", "erm", 0, 1, 0.7),
            _rec("A", "erm", 1, 1, 1.0), _rec("B", "erm", 0, 0, 0.3), _rec("B", "erm", 1, 0, 0.5)]
    rows = [r for r in report.averages(recs) if r["method"] == "oracle"]
    a = next(r for r in rows if r["dataset"] == "A")
    assert a["trial_accs"] == pytest.approx([0.7, 0.85])  # trial means over test envs
    assert a["mean"] == pytest.approx(77.5) and a["se"] == pytest.approx(100 * np.std(np.array([0.7, 0.85]) / np.sqrt(2)))
    b = next(r for r in rows if r["dataset"] == "B")
    assert b["text"] == "40.0 +/- 0.0"
    md = report.markdown(report.collect(recs), report.averages(recs))
    assert "### Averages, model selection: test-domain validation set (oracle)" in md
    assert "| erm | 77.5 +/- 5.3 | 40.0 +/- 0.0 | 58.7 |" in md

    run = tmp_path / "run"
    (run / "j").mkdir(parents=True)
    (run / "j" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["dg", "table", str(run), "--latex"]) == 0
    tex = (run / "results.tex").read_text()
    assert tex.startswith("\\documentclass{article}") and tex.rstrip().endswith("\\end{document}")
    assert "\\subsubsection{Averages}" in tex and "77.5 $\\pm$ 5.3" in tex
    assert "\\textbf{Algorithm} & \\textbf{A} & \\textbf{B} & \\textbf{Avg} \\\\" in tex


# DomainBed's reporting scripts import torch/torchvision/wilds/timm only to define classes; these
# permissive stubs let the scripts' own pure-Python code read a mixjax sweep without torch.
_STUB_RUNNER = '''
import importlib.abc, importlib.machinery, runpy, sys, types
STUBBED = ("torch", "torchvision", "wilds", "timm", "backpack", "clip", "transformers")
class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything
    def __call__(cls, *a, **k):
        return Anything
    def __getitem__(cls, item):
        return Anything
    def __iter__(cls):
        return iter(())
    def __mro_entries__(cls, bases):
        return (object,)
class Anything(metaclass=_Meta):
    pass
class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    def create_module(self, spec):
        m = _Stub(spec.name)
        m.__path__ = []
        return m
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _Finder())
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_module(script, run_name="__main__")
'''


@pytest.mark.skipif(not os.environ.get("MIXJAX_DOMAINBED_DIR"),
                    reason="set MIXJAX_DOMAINBED_DIR to a facebookresearch/DomainBed checkout")
def test_domainbed_collect_results_reads_a_mixjax_sweep(tmp_path):
    """DomainBed's own collect_results.py prints the same tables as `mixjax dg table`."""
    import re
    import subprocess
    import sys

    from test_dg_image_folder import make_folder

    data = make_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "sweep"
    pacs = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_pacs.py")
    assert main(["dg", "sweep", pacs, "--data-dir", str(data), "--run-dir", str(run), "--set", "steps=3",
                 "--set", "checkpoint_freq=2", "--set", "n_hparams=2", "--set", "n_trials=2",
                 "--set", "test_envs=single+pairs", "--set", "algorithms=[erm,coral]",
                 "--set", "dataset.kwargs.image_size=8", "--set", "model.featurizer=mlp",
                 "--set", "model.mlp_width=8", "--set", "hparam_overrides.batch_size=4"]) == 0
    runner = tmp_path / "runner.py"
    runner.write_text(_STUB_RUNNER)
    out = subprocess.run([sys.executable, str(runner), "domainbed.scripts.collect_results", "--input_dir", str(run)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.environ["MIXJAX_DOMAINBED_DIR"]}).stdout
    theirs = {(m.group(1), tuple(re.findall(r"\d+\.\d \+/- \d+\.\d|\d+\.\d", m.group(2))))
              for m in re.finditer(r"^(erm|coral)\s+(.*)$", out, re.M)}
    ours = {(m.group(1), tuple(re.findall(r"\d+\.\d \+/- \d+\.\d|\d+\.\d", m.group(2))))
            for m in re.finditer(r"^\| (erm|coral) \|(.*)$", (run / "results.md").read_text(), re.M)}
    assert len(theirs) >= 6 and theirs == ours  # 3 methods x (PACS table + Averages) rows, same numbers
