"""DG protocols of `mixjax dg sweep` / `mixjax dg table` (docs/dg.md "Protocols"): label noise per
environment, crafted (augmented) validation, the NICO++ folder loader, SMD domains and ICV/IDD."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.cli import main
from mixjax.dg import config as C
from mixjax.dg import datasets as D
from mixjax.dg import hparams as H
from mixjax.dg import label_noise as LN
from mixjax.dg import selection
from mixjax.dg.group_client import add_noisy_labels
from mixjax.dg.group_runner import DeviceData, GroupRunner
from mixjax.dg.jobs import make_jobs

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_tiny.py")


# ----------------------------------------------------------------------------- label noise


def test_label_noise_flips_exactly_round_rate_n_per_env_deterministically():
    rng = np.random.default_rng(0)
    for n, c, rate in [(40, 2, 0.25), (37, 5, 0.3), (10, 3, 0.05), (9, 4, 1.0)]:
        y = rng.integers(0, c, n).astype(np.int32)
        a = LN.flip_labels(y, rate, c, seed=123)
        # the rule restated: exactly round(rate * n) positions change, each to another valid class
        assert int((a != y).sum()) == round(rate * n)
        assert a.min() >= 0 and a.max() < c
        np.testing.assert_array_equal(a, LN.flip_labels(y, rate, c, seed=123))   # deterministic
        # the same draws in plain numpy: positions without replacement, then a shift in 1..C-1
        r = np.random.default_rng(123)
        idx = r.choice(n, round(rate * n), replace=False)
        want = y.copy()
        want[idx] = (y[idx] + r.integers(1, c, len(idx))) % c
        np.testing.assert_array_equal(a, want)
    assert (LN.flip_labels(y, 0.5, 4, seed=1) != LN.flip_labels(y, 0.5, 4, seed=2)).any()


def test_label_noise_in_jobs_training_envs_only_and_in_the_step_and_evaluation():
    cfg = C.load(TINY, ["dataset.label_noise={'env0': 0.25, 'env2': 0.5}", "n_hparams=1", "n_trials=1"])
    data = D.get(cfg.dataset.name, cfg.dataset.seed, **cfg.dataset.kwargs)
    assert LN.env_rates(cfg.dataset.label_noise, data.env_names) == {"env0": 0.25, "env2": 0.5}
    dev = DeviceData(data)
    jobs = make_jobs(cfg, data.num_envs)
    jds = [dev.job_arrays(j, cfg.holdout_fraction) for j in jobs]
    add_noisy_labels(cfg, data, jobs, jds)
    flips = {}
    for job, jd in zip(jobs, jds):
        for e, (_, y) in enumerate(data.envs):
            changed = int((jd["y"][e, : len(y)] != y).sum())
            rate = {0: 0.25, 2: 0.5}.get(e, 0.0)
            assert changed == (0 if e in job.test_envs else round(rate * len(y))), (job.id, e)
            if e not in job.test_envs and rate:
                flips.setdefault(e, set()).add(jd["y"][e].tobytes())
        assert job.args(cfg)["mixjax"]["label_noise"] == {"env0": 0.25, "env2": 0.5}
    assert all(len(v) == 1 for v in flips.values())   # every job sees the same noisy env
    clean = C.load(TINY, [])
    assert "label_noise" not in make_jobs(clean, 3)[0].args(clean)["mixjax"]   # hashes unchanged

    # the sampler and the evaluation read the job's labels
    class Stub:   # predicts class 1 everywhere
        def predict(self, state, x):
            return jnp.tile(jnp.asarray([0.0, 1.0]), (x.shape[0], 1))

    runner = GroupRunner(Stub(), 8, 64, batched=False)
    jd = {k: jnp.asarray(v) for k, v in jds[1].items()}   # test env 1 (0 and 2 noisy)
    xs, ys = runner._sample(jax.random.key(0), jd, dev.X, dev.Y)
    assert ys.shape == (2, 8)
    in_acc, out_acc = runner.evaluate(None, jd, dev.X, dev.Y, 1)
    for e in range(3):
        y = np.asarray(jds[1]["y"][e, : dev.sizes[e]])
        m = np.asarray(jds[1]["in_mask"][e, : dev.sizes[e]])
        assert float(in_acc[e]) == pytest.approx(float((y[m] == 1).mean()), abs=1e-6)
    y_clean = data.envs[1][1]
    m = np.asarray(jds[1]["out_mask"][1, : len(y_clean)])
    assert float(out_acc[1]) == pytest.approx(float((y_clean[m] == 1).mean()), abs=1e-6)

    # the table names the protocol in its dataset title
    assert selection.dataset_label(jobs[0].args(cfg)) == "synthetic (label noise env0=0.25, env2=0.5)"


@pytest.mark.parametrize("spec, culprit", [("{'envX': 0.1}", "'envX' is not an environment of synthetic"),
                                           ("1.5", "rate 1.5 for env 'env0' is outside [0, 1]")])
def test_label_noise_bad_input_exit_2_nothing_written(tmp_path, capsys, spec, culprit):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), f"--set=dataset.label_noise={spec}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.label_noise" in err[0] and culprit in err[0], err
    assert not run.exists()
