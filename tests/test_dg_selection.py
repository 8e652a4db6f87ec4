"""Model selection picks the right checkpoint on constructed records; table formatting."""

import pytest

from mixjax.dg import report, selection


def rec(test_envs, hp, step, trial=0, ins=(0.5, 0.5, 0.5), outs=(0.5, 0.5, 0.5)):
    r = {"args": {"dataset": "d", "algorithm": "erm", "test_envs": list(test_envs), "hparams_seed": hp,
                  "trial_seed": trial}, "step": step}
    for i in range(3):
        r[f"env{i}_in_acc"], r[f"env{i}_out_acc"] = ins[i], outs[i]
    return r


def constructed(trial=0, with_pairs=True):
    """Test env 0. Each method should pick a different (hparams, step)."""
    rs = [
        # hparams 0: best training-domain val at step 0 (test 0.3); test 0.8 at step 1
        rec([0], 0, 0, trial, ins=(0.3, 1, 1), outs=(0.1, 0.9, 0.9)),
        rec([0], 0, 1, trial, ins=(0.8, 1, 1), outs=(0.6, 0.5, 0.5)),
        # hparams 1: training-domain val 0.6 then 0.7; last checkpoint's test out-split is the best (0.65)
        rec([0], 1, 0, trial, ins=(0.6, 1, 1), outs=(0.2, 0.6, 0.6)),
        rec([0], 1, 1, trial, ins=(0.4, 1, 1), outs=(0.65, 0.7, 0.7)),
    ]
    if with_pairs:
        rs += [
            # leave-one-out: hparams 0 at step 1 holds out env 1 / env 2 best (0.9)
            rec([0, 1], 0, 0, trial, ins=(0, 0.2, 0)), rec([0, 1], 0, 1, trial, ins=(0, 0.9, 0)),
            rec([0, 2], 0, 0, trial, ins=(0, 0, 0.2)), rec([0, 2], 0, 1, trial, ins=(0, 0, 0.9)),
            rec([0, 1], 1, 0, trial), rec([0, 1], 1, 1, trial), rec([0, 2], 1, 0, trial), rec([0, 2], 1, 1, trial),
        ]
    return rs


def group0(records):
    return selection.group_records(records)[(0, "d", "erm", 0)]


def test_training_domain_validation_picks_best_train_out_split_checkpoint():
    best = selection.sweep_acc(group0(constructed()), "training_domain")
    assert (best["hparams_seed"], best["step"], best["test_acc"]) == (0, 0, 0.3)
    assert best["val_acc"] == pytest.approx(0.9)


def test_oracle_uses_last_checkpoint_test_out_split():
    best = selection.sweep_acc(group0(constructed()), "oracle")
    assert (best["hparams_seed"], best["step"], best["test_acc"]) == (1, 1, 0.4)


def test_leave_one_domain_out_uses_pair_runs():
    best = selection.sweep_acc(group0(constructed()), "leave_one_out")
    assert (best["hparams_seed"], best["step"], best["test_acc"]) == (0, 1, 0.8)
    assert best["val_acc"] == pytest.approx(0.9)  # (0.9 + 0.9) / (n_envs - 1)
    # without pair runs leave-one-out has no answer ("X" in tables), the others still do
    assert selection.sweep_acc(group0(constructed(with_pairs=False)), "leave_one_out") is None
    assert selection.sweep_acc(group0(constructed(with_pairs=False)), "training_domain")["test_acc"] == 0.3


def test_pair_runs_are_grouped_under_both_test_envs():
    groups = selection.group_records(constructed())
    assert len(groups[(0, "d", "erm", 1)]) == 4 and len(groups[(0, "d", "erm", 2)]) == 4


def test_format_mean_matches_domainbed():
    assert report.format_mean([0.1, 0.2, 0.3])[2] == "20.0 +/- 4.7"
    assert report.format_mean([]) == (None, None, "X")


def test_table_rows_average_over_trials():
    records = constructed(0) + constructed(1)
    for r in records[len(records) // 2:]:
        if r["args"]["test_envs"] == [0] and r["step"] == 0 and r["args"]["hparams_seed"] == 0:
            r["env0_in_acc"] = 0.5  # trial 1 picks the same checkpoint with test 0.5
    rows = report.collect(records, {"d": ["a", "b", "c"]})
    row = next(r for r in rows if r["method"] == "training_domain" and r["test_env"] == 0)
    assert row["trial_accs"] == [0.3, 0.5] and row["text"] == "40.0 +/- 7.1"
    md = report.markdown(rows)
    assert "| erm | 40.0 +/- 7.1 |" in md and "| Algorithm | a | b | c | Avg |" in md
    assert report.csv_text(rows).splitlines()[1].startswith("training_domain,d,erm,a,0,40.00,7.07,2,")
