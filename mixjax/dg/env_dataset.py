"""The multi-environment dataset type shared by every DG data source (mixjax.dg.datasets,
mixjax.dg.image_folder)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EnvDataset:
    """Environments of one DG task. ``envs[i] = (x f32[N_i,H,W,C], y int32[N_i])``."""

    name: str
    env_names: tuple[str, ...]
    envs: tuple[tuple[np.ndarray, np.ndarray], ...]
    num_classes: int
    # image-folder datasets: the source file of every image (``files[i][j]`` is ``envs[i][0][j]``)
    # and whether training draws are re-read and augmented (mixjax.dg.image_pipeline)
    files: tuple[tuple[str, ...], ...] | None = None
    augment: bool = False
    # numbers known about each environment (a rotation angle, a colour correlation, ...),
    # ``env_metadata[i] = {name: float}``, the same names for every env; passed to an
    # algorithm's test-time procedure (mixjax.dg.test_time)
    env_metadata: tuple[dict[str, float], ...] | None = None

    def __post_init__(self):
        if len(self.env_names) != len(self.envs):
            raise ValueError(f"{self.name}: {len(self.env_names)} env names for {len(self.envs)} envs")
        shapes = {x.shape[1:] for x, _ in self.envs}
        if len(shapes) != 1:
            raise ValueError(f"{self.name}: environments have different image shapes {shapes}")
        for name, (x, y) in zip(self.env_names, self.envs):
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(f"{self.name}: env {name!r} has {len(x)} images and {len(y)} labels")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise ValueError(f"{self.name}: env {name!r} has labels outside [0, {self.num_classes})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.envs[0][0].shape[1:])

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def sizes(self) -> list[int]:
        return [len(y) for _, y in self.envs]
