"""DomainBed's image benchmarks read from a local folder (no download, ever).

Layout (DomainBed ``datasets.py`` ``MultipleEnvironmentImageFolder``): ``DATA_DIR/<sub>/<domain>/
<class>/**/*.jpg`` with ``<sub>`` = ``PACS``, ``VLCS``, ``office_home``, ``terra_incognita`` or
``domain_net``; ``root`` may also point at ``<sub>`` itself. As DomainBed: environments are the
sorted domain directories; within a domain, torchvision ``ImageFolder`` order (classes sorted,
``os.walk`` sorted, file names sorted; extensions .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
.webp, any case), so index-based splits (``seed_hash(trial_seed, env)``) pick the same images.
Unlike DomainBed, every domain must have the same class directories (else one error names the
domain and the classes that differ): DomainBed indexes each domain's classes separately, so a
missing class would silently shift labels.

Images get DomainBed's evaluation transform - ``Resize((s, s))`` (bilinear, PIL), ``ToTensor``,
ImageNet ``Normalize`` - at ``image_size`` s (DomainBed: 224) and are held in memory as
``f32[N, s, s, 3]`` for evaluation; the estimated size is checked against ``max_gb`` before
any image is decoded. With ``augment=True`` (DomainBed's ``data_augmentation`` default) the
dataset also carries its file list, and the sweep's training minibatches are re-read from disk
and augmented by ``mixjax.dg.image_pipeline`` (DomainBed's training transform,
``mixjax.dg.transforms``); ``augment=False`` trains on the in-memory evaluation-transform images.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib

import numpy as np

from mixjax.dg import transforms as T
from mixjax.dg.env_dataset import EnvDataset

# DomainBed class name -> (sub-directory of data_dir, ENVIRONMENTS labels)
BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PACS": ("PACS", ("A", "C", "P", "S")),
    "VLCS": ("VLCS", ("C", "L", "S", "V")),
    "OfficeHome": ("office_home", ("A", "C", "P", "R")),
    "TerraIncognita": ("terra_incognita", ("L100", "L38", "L43", "L46")),
    "DomainNet": ("domain_net", ("clip", "info", "paint", "quick", "real", "sketch")),
    # NICO++ (Zhang et al., CVPR 2023, arXiv 2204.08040), its DG track: the six common contexts,
    # each a folder of the same class folders (the challenge's track_1 public_dg_0416/train/
    # <context>/<class>/*.jpg; 60 classes). Not in DomainBed; --data-dir DIR holds DIR/NICO++/ or
    # is that folder itself. NICO++'s unique contexts (one set per class) do not fit this layout.
    "NICOpp": ("NICO++", ("autumn", "dim", "grass", "outdoor", "rock", "water")),
}
# benchmarks that are not DomainBed's (their errors should not say "DomainBed's")
NOT_DOMAINBED = ("NICOpp",)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = T.IMAGENET_MEAN, T.IMAGENET_STD


class ImageFolderError(ValueError):
    """A DG image folder is missing or not in DomainBed's layout."""


def resolve_root(name: str, root: str | os.PathLike | None) -> pathlib.Path:
    if root is None:
        raise ImageFolderError(f"dataset {name} reads a local folder: pass --data-dir DIR "
                               f"(DIR/{BENCHMARKS[name][0]}/<domain>/<class>/*.jpg)")
    root = pathlib.Path(root).expanduser()
    sub = root / BENCHMARKS[name][0]
    if sub.is_dir():
        return sub
    if not root.is_dir():
        raise ImageFolderError(f"dataset {name}: data directory {root} does not exist")
    return root


def scan(name: str, root: str | os.PathLike | None) -> tuple[pathlib.Path, list[str], list[str], list[list[tuple[str, int]]]]:
    """(root, domains, classes, per-domain [(path, label)]) in ImageFolder order; raises ImageFolderError."""
    root = resolve_root(name, root)
    domains = sorted(e.name for e in os.scandir(root) if e.is_dir())
    expected = len(BENCHMARKS[name][1])
    if len(domains) != expected or (name in NOT_DOMAINBED and domains != sorted(BENCHMARKS[name][1])):
        whose = "" if name in NOT_DOMAINBED else "DomainBed's "
        missing = [d for d in BENCHMARKS[name][1] if d not in domains] if name in NOT_DOMAINBED else []
        raise ImageFolderError(f"dataset {name}: {root} has {len(domains)} domain directories {domains}; "
                               f"{whose}{name} has {expected} ({', '.join(BENCHMARKS[name][1])})"
                               + (f" - missing {missing}" if missing else ""))
    classes_of = {d: sorted(e.name for e in os.scandir(root / d) if e.is_dir()) for d in domains}
    classes = classes_of[domains[0]]
    for d in domains:
        if not classes_of[d]:
            raise ImageFolderError(f"dataset {name}: domain folder {root / d} has no class directories")
        if classes_of[d] != classes:
            only_here = sorted(set(classes_of[d]) - set(classes))
            missing = sorted(set(classes) - set(classes_of[d]))
            raise ImageFolderError(f"dataset {name}: domain {d!r} has classes that differ from domain "
                                   f"{domains[0]!r}: extra {only_here}, missing {missing}")
    files = []
    for d in domains:
        items = []
        for label, c in enumerate(classes):
            for dirpath, _, fnames in sorted(os.walk(root / d / c, followlinks=True)):
                items += [(os.path.join(dirpath, f), label) for f in sorted(fnames) if f.lower().endswith(IMG_EXTENSIONS)]
        if not items:
            raise ImageFolderError(f"dataset {name}: domain folder {root / d} has no images")
        files.append(items)
    return root, domains, classes, files


def load_image(path: str, size: int) -> np.ndarray:
    """DomainBed's eval transform: RGB, Resize((size, size)) bilinear, /255, ImageNet normalisation."""
    try:
        im = T.eval_transform(T.open_rgb(path), size)
    except OSError as e:
        raise ImageFolderError(f"cannot read image {path}: {e}") from None
    return T.normalize(im)


def image_folder(name: str, seed: int = 0, root: str | None = None, image_size: int = 224,
                 max_gb: float = 16.0, workers: int | None = None, augment: bool = True) -> EnvDataset:
    """DomainBed benchmark ``name`` (a key of ``BENCHMARKS``) from ``root``; ``seed`` is unused
    (the images are the data), kept for the dataset interface; ``augment``: train on
    DomainBed's augmented images (see the module docstring)."""
    root, domains, classes, files = scan(name, root)
    n = sum(len(f) for f in files)
    gb = n * image_size * image_size * 3 * 4 / 2**30
    if gb > max_gb:
        raise ImageFolderError(f"dataset {name}: {n} images at {image_size}px need {gb:.1f} GB in memory "
                               f"(> max_gb={max_gb}); lower dataset.kwargs.image_size or raise max_gb")
    workers = workers or min(8, os.cpu_count() or 1)
    envs = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for items in files:
            x = np.stack(list(pool.map(lambda it: load_image(it[0], image_size), items)))
            envs.append((x, np.asarray([label for _, label in items], np.int32)))
    labels = BENCHMARKS[name][1]
    # DomainBed's ENVIRONMENTS labels when they line up with the sorted folders, else the folder names
    env_names = labels if len(labels) == len(domains) and all(
        d.lower().startswith(lbl.lower()[:1]) for d, lbl in zip(domains, labels)) else tuple(domains)
    return EnvDataset(name, tuple(env_names), tuple(envs), num_classes=len(classes),
                      files=tuple(tuple(p for p, _ in items) for items in files), augment=bool(augment))
