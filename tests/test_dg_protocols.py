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
from mixjax.dg import label_noise as LN
from mixjax.dg import selection
from mixjax.dg.algorithms.base import Algorithm
from mixjax.dg.group_client import DGClient, add_noisy_labels
from mixjax.dg.group_runner import DeviceData, GroupRunner
from mixjax.dg.jobs import make_jobs
from mixjax.dg.networks import NetSpec
from mixjax.dg.sweep import with_shifts

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
        predict_with_state = Algorithm.predict_with_state   # no test-time procedure

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

    # a record holds the crafted-shift accuracies of every env (here: the stub ignores the images)
    cfg_cv = C.load(TINY, ["crafted_val=[blur]"])
    dev = with_shifts(cfg_cv, data, dev, cfg_cv.dataset.seed)
    assert dev.shifted["blur"].shape == dev.X.shape and not np.allclose(dev.shifted["blur"], dev.X)
    recs = {jobs[1]: []}
    client = DGClient(runner, {}, jd, dev, [jobs[1]], fed=False, batched=False, num_envs=3,
                      steps_per_epoch={jobs[1]: 1.0}, records=recs)
    client.total, client.n = {"loss": jnp.float32(2.0)}, 2
    client.evaluate({"alg": None}, done=1, on_grid=True)
    (rec,) = recs[jobs[1]]
    assert rec["loss"] == 1.0 and rec["env1_out_acc_shift_blur"] == pytest.approx(float(out_acc[1]))

    # the table names the protocol in its dataset title
    assert selection.dataset_label(jobs[0].args(cfg)) == "synthetic (label noise env0=0.25, env2=0.5)"


def test_crafted_shifts_of_a_test_time_algorithm_go_through_its_test_time_procedure():
    """The "crafted" selection must validate what a test-time algorithm predicts at test time:
    a stub whose test-time procedure says class [mean(x) > t] and whose plain predict says the
    opposite gets the test-time accuracies on the shifted copies, not the plain ones."""
    cfg = C.load(TINY, ["crafted_val=[blur]", "n_hparams=1", "n_trials=1"])
    data = D.get(cfg.dataset.name, cfg.dataset.seed, **cfg.dataset.kwargs)
    dev = with_shifts(cfg, data, DeviceData(data), cfg.dataset.seed)
    job = make_jobs(cfg, data.num_envs)[1]
    jd = {k: jnp.asarray(v) for k, v in dev.job_arrays(job, cfg.holdout_fraction).items()}
    shifted = np.asarray(dev.shifted["blur"])
    t = float(np.median(shifted.reshape(*shifted.shape[:2], -1).mean(-1)))

    def side(x):   # class 1 where the image's mean is above t
        return (x.reshape(x.shape[0], -1).mean(-1) > t).astype(jnp.float32)

    class TestTimeStub(Algorithm):
        name = "test_time_stub"

        def predict(self, state, x):
            return jnp.stack([side(x), 1 - side(x)], -1)

        def test_time_init(self, state, meta):
            return {}

        def predict_with_state(self, state, tt, x, valid):
            return jnp.stack([1 - side(x), side(x)], -1), tt

    alg = TestTimeStub(net=NetSpec(input_shape=data.input_shape, num_classes=2, featurizer="mlp", mlp_width=4),
                       num_envs=2)
    runner = GroupRunner(alg, 8, 64, batched=False)
    recs = {job: []}
    client = DGClient(runner, {}, jd, dev, [job], fed=False, batched=False, num_envs=3,
                      steps_per_epoch={job: 1.0}, records=recs)
    client.total, client.n = {"loss": jnp.float32(1.0)}, 1
    client.evaluate({"alg": {}}, done=1, on_grid=True)
    (rec,) = recs[job]
    told_apart = 0
    for e in range(3):
        y, m = data.envs[e][1], np.asarray(jd["out_mask"][e, : dev.sizes[e]])
        pred = np.asarray(side(jnp.asarray(shifted[e, : dev.sizes[e]])))
        after, before = float((pred[m] == y[m]).mean()), float((1 - pred[m] == y[m]).mean())
        assert rec[f"env{e}_out_acc_shift_blur"] == pytest.approx(after, abs=1e-6)
        told_apart += abs(after - before) > 1e-3
    assert told_apart   # the two predictors differ on the shifted copies of some env


@pytest.mark.parametrize("spec, culprit", [("{'envX': 0.1}", "'envX' is not an environment of synthetic"),
                                           ("1.5", "rate 1.5 for env 'env0' is outside [0, 1]")])
def test_label_noise_bad_input_exit_2_nothing_written(tmp_path, capsys, spec, culprit):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), f"--set=dataset.label_noise={spec}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.label_noise" in err[0] and culprit in err[0], err
    assert not run.exists()


# ----------------------------------------------------------------------------- crafted-shift validation


def test_crafted_shift_operations_restated_in_numpy():
    from mixjax.dg import crafted_val as V

    rng = np.random.default_rng(0)
    img = rng.random((6, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(V._invert(img, rng), 1.0 - img)
    np.testing.assert_array_equal(V._permute_channels(img, rng), img[..., ::-1])   # 2 channels: swap
    # the Laplacian stencil with replicated borders, by hand
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    lap = 4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
    np.testing.assert_allclose(V._laplace(img, rng), np.clip(lap, 0, 1), atol=1e-6)
    # each image gets one operation of its family: contrast = gamma or linear contrast
    x = rng.random((8, 4, 4, 1)).astype(np.float32)
    out = V.shift_images(x, "contrast", seed=5)
    np.testing.assert_array_equal(out, V.shift_images(x, "contrast", seed=5))   # seeded
    for xi, oi in zip(x, out):
        g = np.log(np.clip(oi, 1e-6, None)) / np.log(np.clip(xi, 1e-6, None))   # gamma: one exponent
        a = (oi - 0.5) / (xi - 0.5)                                             # linear: one slope
        assert np.ptp(g[(xi > 0.05) & (xi < 0.95) & (oi > 1e-3)]) < 1e-3 or np.ptp(a[(oi > 0) & (oi < 1)]) < 1e-3


def _rec(hp, step, test_env, ins, outs, shifts):
    r = {"args": {"test_envs": [test_env], "hparams_seed": hp, "trial_seed": 0, "dataset": "d", "algorithm": "erm"},
         "step": step}
    for e, (i, o) in enumerate(zip(ins, outs)):
        r[f"env{e}_in_acc"], r[f"env{e}_out_acc"] = i, o
    for f, accs in shifts.items():
        for e, a in enumerate(accs):
            r[f"env{e}_out_acc_shift_{f}"] = a
    return r


def test_crafted_selection_rule_on_hand_records():
    # test env 2; training envs 0, 1; two families; the last checkpoint counts
    h0 = [_rec(0, 0, 2, [.5, .5, .9], [.9, .9, .9], {"blur": [.9, .9, .0], "color": [.9, .9, .0]}),
          _rec(0, 9, 2, [.5, .5, .40], [.8, .8, .5], {"blur": [.6, .4, 1.], "color": [.2, .2, 1.]})]
    h1 = [_rec(1, 9, 2, [.5, .5, .70], [.7, .7, .1], {"blur": [.5, .5, .0], "color": [.4, .4, .0]})]
    # val(h0) = mean(mean(.6, .4), mean(.2, .2)) = 0.35; val(h1) = mean(.5, .4) = 0.45 -> h1, test acc .70
    assert selection.crafted_run_acc(h0)["val_acc"] == pytest.approx(0.35)
    best = selection.sweep_acc(h0 + h1, "crafted")
    assert best["hparams_seed"] == 1 and best["test_acc"] == 0.70 and best["val_acc"] == pytest.approx(0.45)
    assert selection.sweep_acc(h0 + h1, "training_domain")["hparams_seed"] == 0   # picks differently
    assert selection.methods_for(h0) == ["training_domain", "leave_one_out", "oracle", "crafted"]
    plain = [{k: v for k, v in r.items() if "shift" not in k} for r in h0]
    assert selection.methods_for(plain) == ["training_domain", "leave_one_out", "oracle"]
    assert selection.crafted_run_acc(plain) is None


@pytest.mark.parametrize("fams, culprit", [("[color]", "'color' needs images [H, W, C] with at least 2 channels"),
                                           ("[fog]", "unknown shift family 'fog'")])
def test_crafted_bad_input_exit_2_nothing_written(tmp_path, capsys, fams, culprit):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", f"crafted_val={fams}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "crafted_val" in err[0] and culprit in err[0], err
    assert not run.exists()


@pytest.mark.slow   # 4 s: trains; the plumbing is checked without training in the tests above
def test_sweep_records_label_noise_and_crafted_shifts_end_to_end(tmp_path):
    run = tmp_path / "run"
    assert main(["dg", "sweep", TINY, "--run-dir", str(run), "--set", "steps=2", "--set", "n_hparams=1",
                 "--set", "n_trials=1", "--set", "test_envs=single", "--set", "dataset.label_noise=0.2",
                 "--set", "crafted_val=[blur,geometric]", "--no-table"]) == 0
    recs = [json.loads(line) for f in run.glob("*/results.jsonl") for line in f.read_text().splitlines()]
    assert len(recs) == 3 * 2   # 3 test envs, records at steps 0 and 1
    for r in recs:
        assert r["args"]["mixjax"]["label_noise"] == 0.2 and r["args"]["mixjax"]["crafted_val"] == ["blur", "geometric"]
        assert all(0.0 <= r[f"env{e}_out_acc_shift_{f}"] <= 1.0 for e in range(3) for f in ("blur", "geometric"))
    assert main(["dg", "table", str(run)]) == 0
    md = (run / "results.md").read_text()
    assert "### synthetic (label noise 0.2), model selection: crafted-shift validation set" in md


# ----------------------------------------------------------------------------- NICO++ folders

NICO_CONTEXTS = ("autumn", "dim", "grass", "outdoor", "rock", "water")


def _nico_tree(root, contexts=NICO_CONTEXTS, classes=("cat", "dog")):
    from PIL import Image

    for i, ctx in enumerate(contexts):
        for j, c in enumerate(classes):
            d = root / "NICO++" / ctx / c
            d.mkdir(parents=True)
            for k in range(1 + j):   # 1 cat, 2 dogs per context
                Image.fromarray(np.full((5, 7, 3), 10 * i + k, np.uint8)).save(d / f"{k}.png")
    return root


def test_nico_folder_loads_contexts_as_environments(tmp_path):
    from mixjax.dg import transforms as T

    data = D.get("NICOpp", root=str(_nico_tree(tmp_path)), image_size=4)
    assert data.env_names == NICO_CONTEXTS and data.num_classes == 2 and data.sizes() == [3] * 6
    for i, (x, y) in enumerate(data.envs):
        np.testing.assert_array_equal(y, [0, 1, 1])          # ImageFolder order: classes sorted, files sorted
        # a constant image through DomainBed's evaluation transform: (v / 255 - mean) / std per channel
        want = (np.asarray([10 * i, 10 * i, 10 * i + 1], np.float32)[:, None] / 255 - T.IMAGENET_MEAN) / T.IMAGENET_STD
        np.testing.assert_allclose(x[:, 0, 0, :], want, atol=1e-5)


def test_nico_missing_context_exit_2_nothing_written(tmp_path, capsys):
    root = _nico_tree(tmp_path / "data", contexts=NICO_CONTEXTS[:5] + ("snow",))
    run = tmp_path / "run"
    cfg = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_nicopp.py")
    assert main(["dg", "sweep", cfg, "--data-dir", str(root), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.kwargs.root" in err[0] and "missing ['water']" in err[0], err
    assert not run.exists()


def test_crafted_val_on_an_image_folder_exit_2(tmp_path, capsys):
    root = _nico_tree(tmp_path / "data")
    cfg = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_nicopp.py")
    run = tmp_path / "run"
    assert main(["dg", "sweep", cfg, "--data-dir", str(root), "--run-dir", str(run), "--set", "crafted_val=[blur]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'crafted_val'" in err[0] and "ImageNet-normalised" in err[0], err
    assert not run.exists()


# ----------------------------------------------------------------------------- one table over several sweeps


def _sweep_dir(path, noise=None):
    args = {"dataset": "d", "algorithm": "erm", "test_envs": [0], "hparams_seed": 0, "trial_seed": 0,
            "mixjax": {} if noise is None else {"label_noise": noise}}
    rec = {"args": args, "step": 0, "env0_in_acc": 0.5, "env0_out_acc": 0.5, "env1_in_acc": 0.9, "env1_out_acc": 0.8}
    (path / "job").mkdir(parents=True)
    (path / "job" / "results.jsonl").write_text(json.dumps(rec) + "\n")
    return path


def test_table_over_clean_and_noisy_sweeps_and_refuses_mixed_cells(tmp_path, capsys):
    a, b = _sweep_dir(tmp_path / "clean"), _sweep_dir(tmp_path / "noisy", noise=0.2)
    assert main(["dg", "table", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    md = (tmp_path / "both" / "results.md").read_text()
    assert "### d, model selection" in md and "### d (label noise 0.2), model selection" in md
    assert "| Algorithm | d | d (label noise 0.2) | Avg |" in md
    c = _sweep_dir(tmp_path / "copy")   # the same jobs as `clean`
    capsys.readouterr()
    assert main(["dg", "table", str(a), str(c), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clean" in err[0] and "copy" in err[0] and "both hold results of d / erm" in err[0]
    assert not (tmp_path / "bad").exists()


def test_protocol_options_are_part_of_the_sweep_and_the_image_pipeline_labels():
    from mixjax.config import ConfigError
    from mixjax.dg import image_pipeline as P

    old = C.load(TINY, ["dataset.label_noise=0.1"])
    new = C.load(TINY, ["dataset.label_noise={'env0': 0.3}"])
    with pytest.raises(ConfigError, match=r"dataset.label_noise=0.1, the command asks dataset.label_noise=\{'env0': 0.3\}"):
        C.merge_into_existing(C.to_dict(old), new)
    with pytest.raises(ConfigError, match="crafted_val"):
        C.merge_into_existing(C.to_dict(old), C.load(TINY, ["dataset.label_noise=0.1", "crafted_val=[blur]"]))
    # augmented image folders: the host pipeline reads the job's (noisy) labels
    data = D.EnvDataset("f", ("a", "b"), ((np.zeros((3, 2, 2, 3), np.float32), np.asarray([0, 1, 0], np.int32)),) * 2,
                        num_classes=2, files=(("p0", "p1", "p2"),) * 2)
    in_idx, in_len = np.asarray([[2, 0], [1, 2]], np.int32), np.asarray([2, 2], np.int32)
    labels = np.asarray([[1, 0, 1], [1, 1, 1]], np.int32)
    spec = P.for_job(data, in_idx, in_len, [0, 1], 4, 2, seed=0, labels=labels)
    assert [list(y) for y in spec.labels] == [[1, 1], [1, 1]] and spec.paths == (("p2", "p0"), ("p1", "p2"))
    assert [list(y) for y in P.for_job(data, in_idx, in_len, [0, 1], 4, 2, seed=0).labels] == [[0, 0], [1, 0]]


def test_crafted_grid_cells_and_fog_restated():
    from mixjax.dg import crafted_val as V

    img = np.random.default_rng(1).random((40, 40, 1)).astype(np.float32)
    out = V._grid_cells(img, np.random.default_rng(3))
    c = max(2, int(round(np.random.default_rng(3).uniform(0.05, 0.1) * 40)))
    np.testing.assert_allclose(out[:c, :c, 0], img[:c, :c, 0].mean(), rtol=1e-5)   # one cell = its mean
    fog = V._fog(img, np.random.default_rng(0))
    assert (fog >= img - 1e-6).all() and fog.mean() > img.mean() + 0.2        # a veil of light: only brighter
    x = np.random.default_rng(2).random((3, 12, 12, 2)).astype(np.float32)
    for fam in ("edges", "segmentation", "weather"):
        y = V.shift_images(x, fam, seed=4)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not np.allclose(y, x)
