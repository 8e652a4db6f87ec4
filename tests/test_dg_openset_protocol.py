"""The open-set DG protocol (``dataset.open_set_unknown``, mixjax.dg.openset): the class split
restated in numpy, the per-record scoring (max softmax probability by default, MEDIC's OVA
score) restated in numpy through the sweep's scorer, the sweep's record columns and table, and
bad input (one line naming the key, exit 2, nothing written)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dg_fakes import TINY_NET, build_algorithm
from mixjax.cli import main
from mixjax.config import ConfigError
from mixjax.dg import config as C
from mixjax.dg import datasets as D
from mixjax.dg import openset, selection
from mixjax.dg.env_dataset import EnvDataset
from mixjax.dg.group_runner import DeviceData, GroupRunner
from mixjax.dg.jobs import Job
from mixjax.dg.openset_eval import OpenSetEval

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")


def test_split_relabels_known_by_rank_and_keeps_unknown_rows():
    data = D.synthetic(seed=3, num_envs=2, per_env=30, shape=(3, 3, 1), num_classes=5)
    sp = openset.split(data, [3, 1])
    assert sp.known_classes == (0, 2, 4) and sp.unknown_classes == (1, 3) and sp.known.num_classes == 3
    for (x, y), (kx, ky), ux in zip(data.envs, sp.known.envs, sp.unknown_x):
        keep = np.isin(y, [0, 2, 4])
        np.testing.assert_array_equal(kx, x[keep])
        np.testing.assert_array_equal(ky, np.searchsorted([0, 2, 4], y[keep]))   # rank among the known ids
        np.testing.assert_array_equal(ux, x[~keep])


def _numpy_metrics(logits, logits_u, y, score=None, score_u=None):
    def msp(z):
        p = np.exp(z - z.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).max(1)
    score = msp(logits) if score is None else score
    score_u = msp(logits_u) if score_u is None else score_u
    return openset.open_set_metrics(logits.argmax(1), y, score, score_u)


def test_scorer_restated_in_numpy_default_msp_medic_ova_and_vmapped_group():
    rng = np.random.default_rng(0)
    envs = [(rng.normal(size=(14, 5)).astype(np.float32), np.tile(np.arange(4, dtype=np.int32), 4)[:14])
            for _ in range(3)]
    sp = openset.split(EnvDataset("toy", ("a", "b", "c"), tuple(envs), 4), [2])
    dev = DeviceData(sp.known)
    ose = OpenSetEval(sp, eval_batch=64)
    jobs = [Job("toy", "erm", (1,), 0, 0, ()), Job("toy", "erm", (2,), 0, 1, ())]
    jds = [dev.job_arrays(j, 0.2) for j in jobs]
    for name in ("erm", "medic"):
        alg, hp = build_algorithm(name, TINY_NET, num_envs=2, batch_size=4)
        states = [alg.init(jax.random.key(i), hp) for i in range(2)]
        runner = GroupRunner(alg, 4, 64, batched=False)
        recs = {j: [{}] for j in jobs}
        for j, jd, s in zip(jobs, jds, states):
            ose.add_metrics(runner, s, {k: jnp.asarray(v) for k, v in jd.items()}, dev.X, [j], False, recs)
            te = j.test_envs[0]
            kx, ky = sp.known.envs[te]
            rows = jd["in_mask"][te][: len(ky)]
            z, z_u = (np.asarray(alg.predict(s, jnp.asarray(a))) for a in (kx[rows], sp.unknown_x[te]))
            sc = sc_u = None
            if name == "medic":   # ml_open.py 428-435: the OVA "known" probability of the predicted class
                def ova(a, zz):
                    b = np.asarray(alg.heads(s["params"], jnp.asarray(a))[1]).reshape(len(a), 2, -1)
                    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
                    return q[np.arange(len(a)), 1, zz.argmax(1)]
                sc, sc_u = ova(kx[rows], z), ova(sp.unknown_x[te], z_u)
            want = _numpy_metrics(z, z_u, ky[rows], sc, sc_u)
            if name == "medic":   # its max softmax probability too (MEDIC's OSCR_C next to OSCR_B)
                base = _numpy_metrics(z, z_u, ky[rows])
                want.update(auroc_msp=base["auroc"], oscr_msp=base["oscr"])
            assert sorted(recs[j][0]) == sorted(f"env{te}_{m}" for m in want)
            for m in want:
                assert recs[j][0][f"env{te}_{m}"] == pytest.approx(want[m], abs=1e-6)
        if name != "erm":
            continue
        # the vmapped group (one scorer over stacked states) gives every job's numbers
        batched = GroupRunner(alg, 4, 64, batched=True)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
        jd_b = {k: jnp.asarray(np.stack([d[k] for d in jds])) for k in jds[0]}
        recs_b = {j: [{}] for j in jobs}
        ose.add_metrics(batched, stacked, jd_b, dev.X, jobs, True, recs_b)
        for j in jobs:
            for k, v in recs[j][0].items():
                assert recs_b[j][0][k] == pytest.approx(v, abs=1e-6)


def test_two_step_sweep_records_and_table(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", "dataset.kwargs.num_classes=4",
               "--set", "dataset.kwargs.shape=[4,4,1]", "--set", "dataset.open_set_unknown=[3]", "--set", "steps=2",
               "--set", "checkpoint_freq=1", "--set", "n_hparams=1", "--set", "n_trials=1",
               "--set", "test_envs=single"])
    assert rc == 0
    out = capsys.readouterr().out
    recs = [json.loads(line) for p in sorted(run.glob("*/results.jsonl")) for line in p.read_text().splitlines()]
    assert len(recs) == 6   # 3 test envs x 2 records
    for r in recs:
        (te,) = r["args"]["test_envs"]
        assert r["args"]["mixjax"]["open_set_unknown"] == [3]
        assert r[f"env{te}_closed_acc"] == pytest.approx(r[f"env{te}_in_acc"], abs=1e-6)   # the same rows
        assert 0.0 <= r[f"env{te}_auroc"] <= 1.0 and 0.0 <= r[f"env{te}_oscr"] <= r[f"env{te}_closed_acc"] + 1e-9
        assert not any(k.endswith("_auroc") for k in r if not k.startswith(f"env{te}_"))
    title = "synthetic (open set, unknown 3)"
    assert selection.dataset_label(recs[0]["args"]) == title
    rows = [line for line in out.splitlines() if line.startswith(f"| training_domain | {title} | erm |")]
    assert len(rows) == 4 and rows[-1].split(" | ")[3] == "Avg"   # 3 envs + Avg: closed acc, AUROC, OSCR
    cfg = C.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.dataset.open_set_unknown == (3,)
    assert "open_set_unknown" not in C.to_json(C.load(TINY))   # closed-set sweeps keep their config.json
    closed = C.from_dict(json.loads((run / "config.json").read_text()))
    closed.dataset.open_set_unknown = ()
    with pytest.raises(ConfigError, match="dataset.open_set_unknown"):
        C.merge_into_existing(json.loads((run / "config.json").read_text()), closed)


@pytest.mark.parametrize("sets, culprit", [
    (["dataset.open_set_unknown=[1]"], "at least 3 classes"),                       # synthetic: 2 classes
    (["dataset.kwargs.num_classes=4", "dataset.open_set_unknown=[4]"], "outside [0, 4)"),
    (["dataset.kwargs.num_classes=4", "dataset.open_set_unknown=[1,2,3]"], "leave 1 known"),
    (["dataset.kwargs.num_classes=4", "dataset.open_set_unknown=[2,2]"], "repeat"),
    (["dataset.open_set_unknown=[-1]"], ">= 0"),
    (["dataset.open_set_unknown=[1]", "algorithms=[arm]"], "'arm'"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, sets, culprit):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert ("dataset.open_set_unknown" if "arm" not in culprit else "'algorithms'") in err[0]
    assert not run.exists()


def test_table_avg_rule_and_max_softmax_columns_on_hand_records():
    from mixjax.dg import report

    rng = np.random.default_rng(1)
    recs, vals = [], {}
    for alg in ("erm", "medic"):
        for te in (0, 1):
            for trial in (0, 1):
                v = {m: float(rng.uniform(0.3, 0.9)) for m in ("closed_acc", "auroc", "oscr", "auroc_msp", "oscr_msp")}
                vals[(alg, te, trial)] = v
                r = {"args": {"dataset": "toy", "algorithm": alg, "test_envs": [te], "hparams_seed": 0,
                              "trial_seed": trial, "mixjax": {"open_set_unknown": [3]}}, "step": 0,
                     "env0_in_acc": v["closed_acc"], "env1_in_acc": v["closed_acc"], "env0_out_acc": 0.5,
                     "env1_out_acc": 0.5}
                r.update({f"env{te}_{m}": x for m, x in v.items() if alg == "medic" or not m.endswith("_msp")})
                recs.append(r)
    md = report.open_set_markdown(report.collect(recs))
    rows = {tuple(c.strip() for c in line.split("|")[1:5]): [c.strip() for c in line.split("|")[5:-1]]
            for line in md.splitlines() if line.startswith("| training_domain")}
    assert rows[("training_domain", "toy (open set, unknown 3)", "erm", "env0")][3:] == ["-", "-"]
    for alg in ("erm", "medic"):   # Avg: each trial's mean over the test envs, DomainBed's format_mean
        for i, m in enumerate(("closed_acc", "auroc", "oscr", "auroc_msp", "oscr_msp")):
            if alg == "erm" and m.endswith("_msp"):
                continue
            per_trial = np.asarray([np.mean([vals[(alg, te, t)][m] for te in (0, 1)]) for t in (0, 1)])
            want = f"{100 * per_trial.mean():.1f} +/- {100 * np.std(per_trial / np.sqrt(2)):.1f}"
            assert rows[("training_domain", "toy (open set, unknown 3)", alg, "Avg")][i] == want
