"""DomainBed's image transforms in numpy + PIL (no torch / torchvision).

facebookresearch/DomainBed ``domainbed/datasets.py`` ``MultipleEnvironmentImageFolder``:

* evaluation: ``Resize((224, 224))`` -> ``ToTensor`` -> ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``;
* training (``hparams['data_augmentation']``, always True in DomainBed's registry):
  ``RandomResizedCrop(224, scale=(0.7, 1.0))`` -> ``RandomHorizontalFlip()`` ->
  ``ColorJitter(0.3, 0.3, 0.3, 0.3)`` -> ``RandomGrayscale()`` (p = 0.1) -> ``ToTensor`` ->
  ``Normalize``.

Each step follows torchvision's PIL code path (``transforms.py`` / ``functional_pil.py``):

* RandomResizedCrop: up to 10 tries of area ``A * U(scale)`` and aspect ratio
  ``exp(U(log 3/4, log 4/3))``, ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``,
  accepted if it fits, top-left uniform over the valid positions; else a centre crop with the
  ratio clamped to [3/4, 4/3]. Then crop + bilinear resize to ``size x size``.
* ColorJitter: factors ``b, c, s ~ U(0.7, 1.3)``, ``h ~ U(-0.3, 0.3)`` applied in a random
  order (torchvision draws ``randperm(4)``); brightness / contrast / saturation are PIL
  ``ImageEnhance.Brightness / Contrast / Color``; hue adds ``uint8(h * 255)`` to the H channel
  of PIL's HSV image (wrapping mod 256).
* RandomGrayscale: with p = 0.1, PIL ``convert("L")`` (ITU-R 601-2 luma) copied to 3 channels.

Outputs are ``uint8[size, size, 3]`` (the PIL image before ``ToTensor``); :func:`normalize`
is ``ToTensor`` + ``Normalize`` and runs where the batch is used (on the device), so worker
processes ship 4x fewer bytes. The random draws come from a numpy ``Generator`` that the caller
seeds (``augment_rng(seed, step, env, slot)``), so a run's augmentations are reproducible and do
not depend on the number of worker processes; the draws are the same *distribution* as
torchvision's (torch's RNG stream itself is not reproduced).
"""

from __future__ import annotations

import math

import numpy as np

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.3  # DomainBed's ColorJitter(0.3, 0.3, 0.3, 0.3)
GRAYSCALE_P = 0.1  # torchvision RandomGrayscale's default


def augment_rng(seed: int, step: int, env: int, slot: int) -> np.random.Generator:
    """The generator of one training draw: a function of (job seed, step, env, slot in batch) only."""
    return np.random.default_rng([int(seed) % 2**63, int(step), int(env), int(slot)])


def open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def eval_transform(img, size: int) -> np.ndarray:
    """``Resize((size, size))`` (bilinear) -> uint8[size, size, 3]."""
    from PIL import Image

    return np.asarray(img.resize((size, size), Image.BILINEAR), np.uint8)


def resized_crop_params(width: int, height: int, rng: np.random.Generator,
                        scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def adjust_hue(img, hue_factor: float):
    """torchvision ``functional_pil.adjust_hue``: shift PIL's 8-bit H channel by uint8(h * 255)."""
    from PIL import Image

    h, s, v = img.convert("HSV").split()
    shift = int(hue_factor * 255) % 256  # np.uint8(float) truncates toward zero, then wraps
    np_h = (np.asarray(h, np.uint16) + shift) % 256
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


def color_jitter(img, rng: np.random.Generator, strength: float = JITTER):
    """torchvision ``ColorJitter(strength, strength, strength, strength)`` on a PIL image."""
    from PIL import ImageEnhance

    order = rng.permutation(4)
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    b, c, s = rng.uniform(lo, hi), rng.uniform(lo, hi), rng.uniform(lo, hi)
    h = rng.uniform(-strength, strength)
    for fn in order:
        if fn == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif fn == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif fn == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, h)
    return img


def train_transform(img, size: int, rng: np.random.Generator) -> np.ndarray:
    """DomainBed's training augmentation of a PIL RGB image -> uint8[size, size, 3]."""
    from PIL import Image

    i, j, h, w = resized_crop_params(img.width, img.height, rng)
    img = img.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    if rng.uniform() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = color_jitter(img, rng)
    if rng.uniform() < GRAYSCALE_P:
        img = img.convert("L").convert("RGB")
    return np.asarray(img, np.uint8)


def normalize(x):
    """``ToTensor`` + ImageNet ``Normalize`` of uint8 images (numpy or jax arrays, channels last)."""
    return (x.astype("float32") / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
