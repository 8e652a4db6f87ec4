"""Training minibatches of an image-folder DG dataset, read and augmented by a grain pipeline.

One element of the pipeline is one training step's minibatches, DomainBed's ``minibatches``
(``scripts/train.py``: ``next(train_minibatches_iterator)``, one batch per training env):

    grain.MapDataset.range(steps)                         # step t
      .map(StepBatches(...))                              # t -> uint8[K, b, s, s, 3], int32[K, b]
      .to_iter_dataset() [-> mp_prefetch(workers)]        # steps made ahead in worker processes

Step ``t``, env ``k``: ``b`` indices drawn uniformly *with replacement* from the env's in-split
(DomainBed's ``InfiniteDataLoader``: ``RandomSampler(replacement=True)``) by
``default_rng([seed, t, k])``; image ``j`` of that batch is read from disk and augmented
(``mixjax.dg.transforms.train_transform``) with ``augment_rng(seed, t, k, j)``. Everything is a
function of (seed, step, env, slot), so batches are identical with 0 or N workers and across
reruns. Worker processes run whole steps (the decode + augmentation of ``K x b`` images), so
the parent receives one uint8 array per step; normalisation (``transforms.normalize``) happens
in the compiled training step.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from mixjax.dg import transforms as T


@dataclasses.dataclass(frozen=True)
class StepBatches(grain.transforms.Map):
    """``t -> {"x": uint8[K, b, s, s, 3], "y": int32[K, b]}`` for the K training envs."""

    paths: tuple[tuple[str, ...], ...]  # per training env: the files of its in-split
    labels: tuple[np.ndarray, ...]
    batch_size: int
    image_size: int
    seed: int
    augment: bool = True

    def map(self, step):
        step = int(step)
        k, b, s = len(self.paths), self.batch_size, self.image_size
        x = np.empty((k, b, s, s, 3), np.uint8)
        y = np.empty((k, b), np.int32)
        for e, (paths, labels) in enumerate(zip(self.paths, self.labels)):
            idx = np.random.default_rng([self.seed % 2**63, step, e]).integers(0, len(paths), b)
            for j, i in enumerate(idx):
                try:
                    img = T.open_rgb(paths[i])
                except OSError as err:  # e.g. changed on disk after the scan that checked it
                    from mixjax.dg.image_folder import ImageFolderError

                    raise ImageFolderError(f"cannot read image {paths[i]}: {err}") from None
                x[e, j] = (T.train_transform(img, s, T.augment_rng(self.seed, step, e, j)) if self.augment
                           else T.eval_transform(img, s))
            y[e] = labels[idx]
        return {"x": x, "y": y}


@dataclasses.dataclass(frozen=True)
class GroupBatches(grain.transforms.Map):
    """``t -> {"x": uint8[G, K, b, s, s, 3], "y": int32[G, K, b]}``: the steps of G jobs trained
    together (one vmapped group), made by one pipeline so its workers serve the whole group."""

    jobs: tuple[StepBatches, ...]

    def map(self, step):
        items = [j.map(step) for j in self.jobs]
        return {"x": np.stack([i["x"] for i in items]), "y": np.stack([i["y"] for i in items])}


def _absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside absl.app.run they are unparsed
    try:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:  # pragma: no cover
        pass


def train_batches(batches: StepBatches | GroupBatches, steps: int, workers: int = 0, buffer: int = 2,
                  start: int = 0) -> grain.IterDataset:
    """The steps ``start .. steps - 1`` of ``batches``; ``workers`` > 0 makes them in that many
    worker processes, each keeping ``buffer`` steps ready. Each process reads with one thread
    and prefetches at most ``buffer`` steps (grain's defaults, 16 threads and 500 elements, would
    hold hundreds of 224-px minibatches in memory)."""
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer)
    ds = grain.MapDataset.range(start, steps).map(batches).to_iter_dataset(read)
    if workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return ds


def for_job(data, in_idx: np.ndarray, in_len: np.ndarray, train_envs, batch_size: int, image_size: int,
            seed: int, augment: bool = True, labels=None) -> StepBatches:
    """The :class:`StepBatches` of one job: ``data.files`` restricted to the job's in-splits;
    ``labels`` (``int32[E, N]``, the label-noise protocol's job labels) replaces the dataset's."""
    paths, out = [], []
    for e in train_envs:
        rows = in_idx[e, : in_len[e]]
        paths.append(tuple(data.files[e][i] for i in rows))
        y = np.asarray(data.envs[e][1]) if labels is None else np.asarray(labels[e])
        out.append(y[rows].astype(np.int32))
    labels = out
    return StepBatches(tuple(paths), tuple(labels), batch_size, image_size, int(seed), augment)
