"""Loading a trained reference model (``train.reference``) for mixers that need one.

DoReMi's excess loss and similar rules read ``ref_loss`` from a frozen model:
the latest checkpoint of another run dir, restored params-only onto the
abstract shapes of that run's own model config. The trainer hands
:func:`load_reference` to the Method (``MethodContext.load_reference``), which
calls it only when its statistics need a reference model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from mixjax import config as config_lib
from mixjax.train import checkpoint as ckpt_lib


def run_model_config(run_dir: str | pathlib.Path, vocab_size: int):
    """The ``TransformerConfig`` a run dir's ``config.json`` describes."""
    from mixjax.models.transformer import TransformerConfig
    path = pathlib.Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no config.json)")
    cfg = config_lib.from_dict(json.loads(path.read_text()))
    arch = {k: v for k, v in dataclasses.asdict(cfg.model).items()
            if k not in ("vocab_size", "init_from")}   # the vocabulary comes from the data
    return TransformerConfig(vocab_size=vocab_size, **arch)


def load_reference(run_dir: str, vocab_size: int):
    """``(apply, params)`` of the latest checkpoint of a reference run."""
    from mixjax.models import transformer
    apply, abstract_params, _ = transformer.abstract_init(run_model_config(run_dir, vocab_size))
    ck = ckpt_lib.Checkpointer(pathlib.Path(run_dir) / "checkpoints")
    step = ck.latest_step()
    if step is None:
        raise FileNotFoundError(f"reference run {run_dir!r} has no checkpoint")
    params = ckpt_lib.restore_params(ck.manager, step, abstract_params)
    ck.close()
    return apply, params
