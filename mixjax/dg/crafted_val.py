"""Crafted-shift validation: the training envs' held-out splits under synthetic distribution shifts.

Efthymiadis, Tolias & Chum, "Crafting Distribution Shifts for Validation and Training in Single
Source Domain Generalization" (WACV 2025, arXiv 2409.19774; code NikosEfth/crafting-shifts @
fa2e98d): the validation set is the source domain's validation split with every image transformed
by **one** augmentation drawn at random from an augmentation *family* (``create_imgaug_datasets.py``
``apply_random_augmentation``: ``random.choice(augmentations)`` per image, one copy of the split
per family, 10 imgaug families), and a model's validation score is the **mean over families** of
its accuracy on these copies (``Imgaug_average``, ``aggregate_results.py``), measured on the
model after the last epoch (``utils_train_inference.py``: ``testing_function`` after training).

Here (``crafted_val=[families]`` in the sweep config; ``selection.crafted_run_acc`` selects):

* the families are re-derived in numpy/scipy on ``f32[N, H, W, C]`` images in [0, 1] (the
  reference uses imgaug on 227-px uint8 images; 9 of its 10 families - not ``artistic``, imgaug's
  cartoon filter - and not all of its ~60 operations, see ``FAMILIES``; ``edges``,
  ``segmentation`` and ``weather`` are approximations: a thresholded blurred Sobel map for Canny,
  regular-grid cell means for Voronoi/superpixels, a smooth random veil for fog/clouds); pixel amounts are the reference's 0-255 ranges divided by 255, and sizes (blur
  widths) are the reference's fractions of its 227-px side, at least 0.5 px;
* each operation and its parameters are drawn per image by ``default_rng(seed_hash("crafted_val",
  data_seed, env, family))``, so the shifted copies are a fixed function of the dataset
  realisation, the env and the family, shared by every job;
* with several training envs the score is, per family, the mean over the job's training envs of
  the out-split accuracy (DomainBed's training-domain weighting), then the mean over families.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mixjax.config import ConfigError
from mixjax.dg import hparams as H

KEY = "crafted_val"
_REF_SIDE = 227.0   # the reference resizes the shorter side to 227 px before augmenting


def _clip(x):
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _pm(rng, lo, hi):
    """U(lo, hi) with a random sign: the reference's ``random.choice([(-hi, -lo), (lo, hi)])``."""
    return float(rng.uniform(lo, hi)) * (1.0 if rng.random() < 0.5 else -1.0)


def _side(img) -> float:
    return float(min(img.shape[0], img.shape[1]))


# ---- arithmetic (iaa.Add, AdditiveGaussianNoise, Dropout, SaltAndPepper, Invert, Solarize)
def _add(img, rng):
    return _clip(img + _pm(rng, 50, 200) / 255)


def _gauss_noise(img, rng):
    return _clip(img + rng.normal(0.0, rng.uniform(50, 150) / 255, img.shape))


def _dropout(img, rng):
    return _clip(img * (rng.random(img.shape[:2] + (1,)) >= rng.uniform(0.2, 0.5)))


def _salt_pepper(img, rng):
    out = img.copy()
    hit = rng.random(img.shape[:2]) < 0.5
    out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)[:, None]
    return out


def _invert(img, rng):
    return _clip(1.0 - img)


def _solarize(img, rng):
    t = rng.uniform(32, 128) / 255
    return _clip(np.where(img >= t, 1.0 - img, img))


# ---- blur (GaussianBlur sigma 5-7 px, AverageBlur k 9-15 px, at 227 px)
def _gauss_blur(img, rng):
    s = max(0.5, rng.uniform(5, 7) / _REF_SIDE * _side(img))
    return _clip(ndimage.gaussian_filter(img, (s, s, 0)))


def _mean_blur(img, rng):
    k = max(2, int(round(rng.uniform(9, 15) / _REF_SIDE * _side(img))))
    return _clip(ndimage.uniform_filter(img, (k, k, 1)))


# ---- colour (channel-wise changes; needs >= 2 channels)
def _permute_channels(img, rng):
    c = img.shape[-1]
    perm = np.roll(np.arange(c), int(rng.integers(1, c)))   # never the identity
    return img[..., perm]


def _grayscale(img, rng):
    a = rng.uniform(0.8, 1.0)
    g = img.mean(-1, keepdims=True)
    return _clip((1 - a) * img + a * g)


def _scale_channels(img, rng):
    f = np.where(rng.random(img.shape[-1]) < 0.5, rng.uniform(0.1, 0.3, img.shape[-1]),
                 rng.uniform(1.8, 2.0, img.shape[-1]))
    return _clip(img * f)


# ---- contrast (GammaContrast, LinearContrast: 0.1-0.3 or 1.8-2.0)
def _gamma(img, rng):
    g = rng.uniform(0.1, 0.3) if rng.random() < 0.5 else rng.uniform(1.8, 2.0)
    return _clip(img ** g)


def _linear_contrast(img, rng):
    a = rng.uniform(0.1, 0.3) if rng.random() < 0.5 else rng.uniform(1.8, 2.0)
    return _clip(0.5 + a * (img - 0.5))


# ---- geometric (Affine rotate 15-45 deg, translate up to 40%, scale 0.5-0.75 or 1.25-1.75)
def _affine(img, matrix, offset):
    return _clip(np.stack([ndimage.affine_transform(img[..., c], matrix, offset, order=1, cval=0.0)
                           for c in range(img.shape[-1])], -1))


def _about_centre(img, m):
    centre = (np.asarray(img.shape[:2]) - 1) / 2.0
    return _affine(img, m, centre - m @ centre)


def _rotate(img, rng):
    t = np.deg2rad(_pm(rng, 15, 45))
    return _about_centre(img, np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]))


def _translate(img, rng):
    shift = rng.uniform(-0.4, 0.4, 2) * np.asarray(img.shape[:2])
    return _affine(img, np.eye(2), -shift)


def _scale(img, rng):
    s = [rng.uniform(0.5, 0.75) if rng.random() < 0.5 else rng.uniform(1.25, 1.75) for _ in range(2)]
    return _about_centre(img, np.diag(1.0 / np.asarray(s)))


# ---- convolutional (iaa.Convolve with the Laplacian, Sharpen, Emboss)
_LAPLACE = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def _conv(img, k):
    return np.stack([ndimage.convolve(img[..., c], k, mode="nearest") for c in range(img.shape[-1])], -1)


def _laplace(img, rng):
    return _clip(_conv(img, _LAPLACE))


def _sharpen(img, rng):
    a, light = rng.uniform(0.8, 1.0), rng.uniform(0.75, 2.0)
    k = np.array([[-1, -1, -1], [-1, 8 + light, -1], [-1, -1, -1]], np.float32)
    return _clip((1 - a) * img + a * _conv(img, k))


def _emboss(img, rng):
    a, s = rng.uniform(0.8, 1.0), rng.uniform(0.5, 1.5)
    k = np.array([[-1 - s, -s, 0], [-s, 1, s], [0, s, 1 + s]], np.float32)
    return _clip((1 - a) * img + a * _conv(img, k))


# ---- edges (iaa.Sequential([GaussianBlur(sigma=2), Canny(alpha=(0.8, 1))]): here a blurred
# Sobel magnitude thresholded at its 80th percentile, a binary edge map blended in with alpha)
def _edges(img, rng):
    s = max(0.5, 2.0 / _REF_SIDE * _side(img))
    g = ndimage.gaussian_filter(img.mean(-1), s)
    mag = np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1))
    edge = (mag > np.quantile(mag, 0.8)).astype(np.float32)[..., None]
    a = rng.uniform(0.8, 1.0)
    return _clip((1 - a) * img + a * edge)


# ---- segmentation (iaa.RegularGridVoronoi(10, 20) and superpixels: every cell of a regular grid
# replaced by its mean colour; cells of 5-10% of the side, at least 2 px)
def _grid_cells(img, rng):
    h, w = img.shape[:2]
    c = max(2, int(round(rng.uniform(0.05, 0.1) * _side(img))))
    rows, cols = np.arange(h) // c, np.arange(w) // c
    lab = rows[:, None] * (cols.max() + 1) + cols[None, :]
    out = np.empty_like(img)
    for ch in range(img.shape[-1]):
        means = ndimage.mean(img[..., ch], lab, np.arange(lab.max() + 1))
        out[..., ch] = np.asarray(means, np.float32)[lab]
    return _clip(out)


# ---- weather (iaa.Fog / Clouds: a smooth random veil of light blended over the image)
def _fog(img, rng):
    field = ndimage.gaussian_filter(rng.random(img.shape[:2]), max(1.0, _side(img) / 8))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    alpha = (rng.uniform(0.3, 0.5) + rng.uniform(0.2, 0.4) * field)[..., None]
    return _clip((1 - alpha) * img + alpha)


# family -> (operations, the least number of channels it needs)
FAMILIES: dict[str, tuple[tuple, int]] = {
    "arithmetic": ((_add, _gauss_noise, _dropout, _salt_pepper, _invert, _solarize), 1),
    "blur": ((_gauss_blur, _mean_blur), 1),
    "color": ((_permute_channels, _grayscale, _scale_channels), 2),
    "contrast": ((_gamma, _linear_contrast), 1),
    "geometric": ((_rotate, _translate, _scale), 1),
    "convolutional": ((_laplace, _sharpen, _emboss), 1),
    "edges": ((_edges,), 1),
    "segmentation": ((_grid_cells,), 1),
    "weather": ((_fog,), 1),
}


def check(families, data) -> None:
    """``ConfigError`` naming ``crafted_val`` for an unknown family or one the data cannot take."""
    if families and data.files is not None:
        raise ConfigError(f"config key {KEY!r}: the shift families act on images in [0, 1]; dataset "
                          f"{data.name!r} is an image folder whose evaluation images are ImageNet-normalised")
    for f in families:
        if f not in FAMILIES:
            raise ConfigError(f"config key {KEY!r}: unknown shift family {f!r}; known {sorted(FAMILIES)}")
        need = FAMILIES[f][1]
        if data.input_shape[-1] < need or len(data.input_shape) != 3:
            raise ConfigError(
                f"config key {KEY!r}: shift family {f!r} needs images [H, W, C] with at least {need} "
                f"channels; dataset {data.name!r} has inputs of shape {tuple(data.input_shape)}")


def shift_images(x: np.ndarray, family: str, seed: int) -> np.ndarray:
    """Every image of ``x`` transformed by one operation of ``family`` drawn for it (seeded)."""
    ops = FAMILIES[family][0]
    rng = np.random.default_rng(seed)
    out = np.empty_like(x, dtype=np.float32)
    for i in range(len(x)):
        out[i] = ops[int(rng.integers(len(ops)))](np.asarray(x[i], np.float32), rng)
    return out


def shifted_envs(data, families, data_seed: int) -> dict[str, np.ndarray]:
    """``{family: f32[E, N_max, ...]}`` (padded like ``DeviceData.X``): every env shifted by ``family``."""
    out = {}
    n = max(data.sizes())
    for f in families:
        arr = np.zeros((data.num_envs, n, *data.input_shape), np.float32)
        for e, (x, _) in enumerate(data.envs):
            arr[e, : len(x)] = shift_images(x, f, H.seed_hash("crafted_val", int(data_seed), data.env_names[e], f))
        out[f] = arr
    return out


def record_key(env: int, family: str) -> str:
    """The record field of env ``env``'s out-split accuracy under ``family``."""
    return f"env{env}_out_acc_shift_{family}"
