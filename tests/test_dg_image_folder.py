"""DomainBed's image-folder benchmarks on a generated miniature PACS (random JPEGs)."""

import json
import pathlib

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.dg import image_folder as F

PACS = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dg_pacs.py")
DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe")


def make_folder(root, domains=DOMAINS, classes=CLASSES, per_class=4, size=(20, 14)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in domains:
        for c in classes:
            (root / "PACS" / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / "PACS" / d / c / f"{i:03d}.jpg", quality=90)
    return root


def test_scan_order_labels_and_transform(tmp_path):
    root = make_folder(tmp_path)
    (root / "PACS" / "photo" / "dog" / "notes.txt").write_text("not an image")
    (root / "PACS" / "photo" / "dog" / "sub").mkdir()
    from PIL import Image

    Image.new("RGB", (5, 5), (255, 0, 0)).save(root / "PACS" / "photo" / "dog" / "sub" / "X.PNG")
    base, domains, classes, files = F.scan("PACS", root)
    assert base == root / "PACS" and domains == list(DOMAINS) and classes == list(CLASSES)
    photo = files[2]
    assert [pathlib.Path(p).name for p, _ in photo[:5]] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg", "X.PNG"]
    assert [label for _, label in photo] == [0] * 5 + [1] * 4 + [2] * 4
    red = F.load_image(str(root / "PACS" / "photo" / "dog" / "sub" / "X.PNG"), 8)
    np.testing.assert_allclose(red[0, 0], (np.array([1.0, 0, 0]) - F.IMAGENET_MEAN) / F.IMAGENET_STD, rtol=1e-6)

    data = F.image_folder("PACS", root=str(root), image_size=8)
    assert data.env_names == ("A", "C", "P", "S") and data.num_classes == 3
    assert data.input_shape == (8, 8, 3) and data.sizes() == [12, 12, 13, 12]


def test_clear_errors_name_the_culprit(tmp_path, capsys):
    assert main(["dg", "sweep", PACS, "--data-dir", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "r").exists()
    root = make_folder(tmp_path / "a", per_class=1)
    (root / "PACS" / "sketch" / "horse").mkdir()
    with pytest.raises(F.ImageFolderError, match=r"domain 'sketch'.*extra \['horse'\]"):
        F.scan("PACS", root)
    root = make_folder(tmp_path / "b", domains=DOMAINS[:3], per_class=1)
    with pytest.raises(F.ImageFolderError, match="3 domain directories"):
        F.scan("PACS", root)
    with pytest.raises(F.ImageFolderError, match="--data-dir"):
        F.scan("PACS", None)
    root = make_folder(tmp_path / "c", per_class=1)
    (root / "PACS" / "cartoon" / "dog" / "000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(F.ImageFolderError, match="cannot read image .*cartoon/dog/000.jpg"):
        F.image_folder("PACS", root=str(root), image_size=8)
    with pytest.raises(F.ImageFolderError, match="max_gb"):
        F.image_folder("PACS", root=str(make_folder(tmp_path / "d", per_class=1)), image_size=224, max_gb=1e-4)


@pytest.mark.parametrize("model", [
    ["--set", "model.featurizer=mlp", "--set", "model.mlp_width=8"],
    pytest.param(["--set", "model.featurizer=resnet", "--set", "model.resnet_widths=[8,16]"], marks=pytest.mark.slow),
])
def test_pacs_config_sweeps_a_miniature_folder(tmp_path, model):
    root = make_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["dg", "sweep", PACS, "--data-dir", str(root), "--run-dir", str(run), "--set", "steps=2",
                 "--set", "n_hparams=1", "--set", "n_trials=1", "--set", "algorithms=[erm]",
                 "--set", "dataset.kwargs.image_size=16", *model,
                 "--set", "hparam_overrides.batch_size=4"]) == 0
    recs = [json.loads(line) for f in run.glob("*/results.jsonl") for line in f.read_text().splitlines()]
    assert len(recs) == 4 * 2  # 4 test envs x records at steps 0 and 1
    assert {r["args"]["dataset"] for r in recs} == {"PACS"}  # DomainBed's name: its tables list it
    assert {r["args"]["data_dir"] for r in recs} == {str(root.resolve())}
    assert "| erm |" in (run / "results.md").read_text()
    assert json.loads((run / "envs.json").read_text()) == {"PACS": ["A", "C", "P", "S"]}
