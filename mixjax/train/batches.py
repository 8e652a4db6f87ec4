"""The LM step's batches: the sampler's host batch -> device arrays on the mesh."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from mixjax.config import Config, ConfigError
from mixjax.mixing import grads
from mixjax.parallel import step_sharding


def whole_batch_on_host() -> bool:
    """One process holds the whole global batch, so its rows can be grouped by domain on
    the host (with several processes each holds a slice and the engine sorts on device)."""
    return jax.process_count() == 1


def _check_stratified(host_batch: dict, cfg: Config, step: int, domains) -> None:
    """The stratified gradient layout's per-batch check, as a ConfigError naming data.sampler."""
    try:
        grads.check_stratified(host_batch["domain_counts"], cfg.data.batch_size, step=step,
                               domains=domains)
    except ValueError as e:
        raise ConfigError(f"config key 'data.sampler' ({cfg.data.sampler!r}): {e}") from e


def batch_maker(trainer) -> Callable[[dict, Any, int], dict]:
    """``(host batch, sampling weights, t) -> the step's batch``, placed on the mesh.

    Runs on the prefetch thread. The target batch (``grads.target``) is the same
    every step: it is placed once and shared by every batch.
    """
    cfg, mesh = trainer.cfg, trainer.mesh
    blocked = trainer.blocked_batches
    target = None
    if trainer.target_tokens is not None:
        target = step_sharding.replicate_value(np.asarray(trainer.target_tokens), mesh)

    # The placed sampling weights of the previous batch, reused while the weights stay the
    # same (a static mixer: every batch), so a batch is usually two arrays to place, not
    # three. The step never donates its batch, so sharing the array is safe.
    placed_weights: list = [None, None]     # [bytes of the float32 weights, device array]

    def make(host_batch: dict, p, t: int) -> dict:
        tokens = np.asarray(host_batch["tokens"], np.int32)
        domain_id = np.asarray(host_batch["domain_id"], np.int32)
        # per-sequence sample weights of data.selection.mode=weight (mixjax.data.selection)
        rows = {} if "sample_weight" not in host_batch else {
            "sample_weight": np.asarray(host_batch["sample_weight"], np.float32)}
        if trainer.check_stratified:
            _check_stratified(host_batch, cfg, t, trainer.domains)
            if blocked:   # rows grouped by domain here, so the step only reshapes
                order = grads.block_rows(domain_id)
                tokens, domain_id = tokens[order], domain_id[order]
                rows = {k: v[order] for k, v in rows.items()}
        # This process's rows -> global arrays on the mesh's batch axes.
        w = np.asarray(p, np.float32)
        same = placed_weights[0] == w.tobytes()
        batch = step_sharding.shard_batch({
            "tokens": tokens, "domain_id": domain_id, **rows,
            **({} if same else {"sampling_weights": w})}, mesh, cfg.data.batch_size)
        if same:
            batch["sampling_weights"] = placed_weights[1]
        else:
            placed_weights[:] = [w.tobytes(), batch["sampling_weights"]]
        if target is not None:
            batch["target_tokens"] = target
        return batch

    return make

