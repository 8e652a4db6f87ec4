"""DomainBed's training augmentation (numpy/PIL) and the grain pipeline that feeds image-folder sweeps."""

import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from mixjax.dg import image_folder as F
from mixjax.dg import image_pipeline as P
from mixjax.dg import transforms as T
from test_dg_image_folder import PACS, make_folder


def test_random_resized_crop_params_follow_torchvision():
    rng = np.random.default_rng(0)
    for _ in range(500):
        i, j, h, w = T.resized_crop_params(227, 160, rng)
        assert 0 <= i and i + h <= 160 and 0 <= j and j + w <= 227
        # accepted draws: area in [0.7, 1] x A and ratio in [3/4, 4/3], up to the rounding of h, w
        assert 0.7 * 227 * 160 - (h + w + 1) <= h * w <= 227 * 160
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # a 1000x10 strip never fits a crop of ratio <= 4/3 and area >= 0.7: torchvision's fallback,
    # a central crop with the ratio clamped to 4/3
    assert T.resized_crop_params(1000, 10, rng) == (0, (1000 - 13) // 2, 10, 13)


def test_train_transform_is_deterministic_per_seed_step_slot_and_has_domainbed_rates():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    a = T.train_transform(img, 16, T.augment_rng(7, 3, 1, 2))
    b = T.train_transform(img, 16, T.augment_rng(7, 3, 1, 2))
    c = T.train_transform(img, 16, T.augment_rng(7, 3, 1, 3))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # a grey left-to-right ramp: colour jitter keeps its order (brightness/contrast are monotone,
    # saturation/hue leave greys alone), so the slope's sign tells whether the draw flipped it
    ramp = Image.fromarray(np.repeat(np.linspace(0, 255, 20, dtype=np.uint8)[None, :, None], 20, 0).repeat(3, 2))
    colour = Image.new("RGB", (20, 20), (200, 40, 30))
    n = 400
    flips = sum(np.polyfit(np.arange(12), T.train_transform(ramp, 12, T.augment_rng(0, s, 0, 0)).mean((0, 2)), 1)[0] < 0
                for s in range(n))
    grays = 0
    for s in range(n):
        x = T.train_transform(colour, 12, T.augment_rng(1, s, 0, 0)).astype(int)
        grays += int(np.all(x[..., 0] == x[..., 1]) and np.all(x[..., 1] == x[..., 2]))
    assert abs(flips / n - 0.5) < 0.1  # RandomHorizontalFlip p = 0.5
    assert abs(grays / n - T.GRAYSCALE_P) < 0.05  # RandomGrayscale p = 0.1


def test_hue_shift_and_eval_transform():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    cyan = np.asarray(T.adjust_hue(red, 0.5))[0, 0].astype(int)  # half a turn of the hue circle
    assert cyan[0] <= 3 and cyan[1] >= 250 and cyan[2] >= 245
    green = np.asarray(T.adjust_hue(red, 1 / 3))[0, 0].astype(int)  # a third of a turn: red -> green
    assert green[0] <= 8 and green[1] >= 250 and green[2] <= 8
    x = T.normalize(np.full((2, 2, 3), 255, np.uint8))
    np.testing.assert_allclose(x[0, 0], (1 - T.IMAGENET_MEAN) / T.IMAGENET_STD, rtol=1e-6)


def _batches(tmp_path, workers, augment=True, steps=3):
    root = make_folder(tmp_path / "data")
    data = F.image_folder("PACS", root=str(root), image_size=8)
    in_idx = np.stack([np.arange(10), np.arange(2, 12), np.arange(10), np.arange(10)]).astype(np.int32)
    in_len = np.asarray([10, 10, 10, 10], np.int32)
    spec = P.for_job(data, in_idx, in_len, [0, 1, 3], batch_size=5, image_size=8, seed=123, augment=augment)
    return data, spec, list(P.train_batches(spec, steps, workers=workers))


def test_pipeline_batches_are_reproducible_and_independent_of_workers(tmp_path):
    data, spec, serial = _batches(tmp_path, workers=0)
    assert len(serial) == 3 and serial[0]["x"].shape == (3, 5, 8, 8, 3) and serial[0]["x"].dtype == np.uint8
    parallel = list(P.train_batches(spec, 3, workers=2))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(serial[0]["x"], serial[1]["x"])  # fresh draws every step
    # labels are the drawn files' classes, drawn from the env's in-split only (env 1: rows 2..11)
    allowed = {p for p in spec.paths[1]}
    assert allowed == set(data.files[1][2:12])
    for step in range(3):
        idx = np.random.default_rng([123, step, 1]).integers(0, 10, 5)
        np.testing.assert_array_equal(serial[step]["y"][1], data.envs[1][1][2:12][idx])


def test_pipeline_without_augmentation_gives_the_eval_images(tmp_path):
    data, spec, batches = _batches(tmp_path, workers=0, augment=False, steps=1)
    idx = np.random.default_rng([123, 0, 0]).integers(0, 10, 5)
    np.testing.assert_allclose(T.normalize(batches[0]["x"][0]), data.envs[0][0][idx], atol=1e-6)


def test_pacs_sweep_trains_on_the_pipeline_with_workers(tmp_path, capsys):
    """``mixjax dg sweep configs/dg_pacs.py --data-dir DIR`` on the miniature, its augmented
    minibatches made by 2 grain worker processes (one pipeline per vmapped group)."""
    from mixjax.cli import main

    root = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(run), "--set", "steps=3",
                 "--set", "n_hparams=1", "--set", "n_trials=1", "--set", "algorithms=[erm]",
                 "--set", "dataset.kwargs.image_size=16", "--set", "model.featurizer=mlp",
                 "--set", "model.mlp_width=8", "--set", "hparam_overrides.batch_size=4",
                 "--set", "data_workers=2", "--no-table"]) == 0
    recs = [json.loads(line) for f in run.glob("*/results.jsonl") for line in f.read_text().splitlines()]
    assert len(recs) == 4 * 2 and all(math.isfinite(r["loss"]) for r in recs)
    assert "data_workers" not in json.dumps(recs[0]["args"])  # scheduling only: not in the job's hash
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(tmp_path / "r2"),
                 "--set", "dataset.kwargs.augment=no"]) == 2
    assert "dataset.kwargs.augment" in capsys.readouterr().err


def test_training_draws_differ_from_the_in_memory_sampler(tmp_path):
    """augment=False keeps the earlier in-memory path (bit-identical records); augment=True changes them."""
    from mixjax.cli import main

    root = make_folder(tmp_path / "data")
    losses = {}
    for aug in ("True", "False"):
        run = tmp_path / aug
        assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(run), "--set", "steps=2",
                     "--set", "n_hparams=1", "--set", "n_trials=1", "--set", "algorithms=[erm]",
                     "--set", "dataset.kwargs.image_size=16", "--set", f"dataset.kwargs.augment={aug}",
                     "--set", "model.featurizer=mlp", "--set", "model.mlp_width=8",
                     "--set", "hparam_overrides.batch_size=4", "--no-table"]) == 0
        losses[aug] = sorted(json.loads(line)["loss"] for f in run.glob("*/results.jsonl")
                             for line in f.read_text().splitlines())
    assert losses["True"] != losses["False"]


def test_an_image_gone_after_the_scan_is_named(tmp_path):
    data, spec, _ = _batches(tmp_path, workers=0, steps=0)
    path = pathlib.Path(spec.paths[0][0])
    path.write_bytes(b"not a jpeg")
    batches = P.StepBatches(((str(path),),), (np.zeros(1, np.int32),), 1, 8, 0)
    with pytest.raises(F.ImageFolderError, match=f"cannot read image {path}"):
        batches.map(0)
