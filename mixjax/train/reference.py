"""Loading a trained reference model (``train.reference``) for mixers that need one.

DoReMi's excess loss and similar rules read ``ref_loss`` from a frozen model:
the latest checkpoint of another run dir, restored params-only onto the
abstract shapes of that run's own model config. The trainer hands
:func:`load_reference` to the Method (``MethodContext.load_reference``), which
calls it only when its statistics need a reference model.
"""

from __future__ import annotations

import json
import pathlib

from mixjax import config as config_lib
from mixjax.train import checkpoint as ckpt_lib


def _run_config(run_dir: str | pathlib.Path):
    path = pathlib.Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no config.json)")
    return config_lib.from_dict(json.loads(path.read_text()))


def run_model_config(run_dir: str | pathlib.Path, vocab_size: int):
    """The ``TransformerConfig`` a run dir's ``config.json`` describes."""
    from mixjax.models import registry as model_registry
    return model_registry.transformer_config(_run_config(run_dir).model, vocab_size)


def load_reference(run_dir: str, vocab_size: int):
    """``(apply, params)`` of the latest checkpoint of a reference run (any ``model.kind``)."""
    from mixjax.models import registry as model_registry
    spec = model_registry.build(_run_config(run_dir).model, vocab_size)
    apply, abstract_params = spec.apply, spec.abstract_params
    ck = ckpt_lib.Checkpointer(pathlib.Path(run_dir) / "checkpoints")
    step = ck.latest_step()
    if step is None:
        raise FileNotFoundError(f"reference run {run_dir!r} has no checkpoint")
    params = ckpt_lib.restore_params(ck.manager, step, abstract_params)
    ck.close()
    return apply, params
