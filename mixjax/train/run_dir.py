"""A run directory: start it (config.json) or check that a resume of it is consistent."""

from __future__ import annotations

import json
import pathlib

from mixjax import config as config_lib
from mixjax import run_identity
from mixjax.config import Config, ConfigError
from mixjax import atomic

# Keys that may differ between a run's saved config and the one it is resumed with: the
# result-neutral ones (run_identity.NEUTRAL_KEYS) and those a resume may change on purpose.
RESUMABLE_CHANGES = run_identity.NEUTRAL_KEYS + (
    "train.steps", "train.eval_every",
    # set on resume to keep the LR schedule (check_run_dir)
    "optim.schedule_steps",
    # a checkpoint restores onto any mesh (tests/test_checkpoint_reshard.py)
    "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.expert")


class RunDirError(ValueError):
    """The run directory already holds a run (resume it or pick another)."""



def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("hparams", "sample_reweight_hparams", "target_mixture",
                                              "objective_hparams", "tracker_args"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_dir(cfg: Config, resume: bool, *, rebuild_schedule: bool = False) -> list[str]:
    """Checks (writes nothing) that ``cfg`` may start or resume its run dir; returns notes.

    On resume, ``train.run_dir`` itself is not compared (the saved config is read from
    the directory, wherever it now lives or however its path is spelled), and a longer
    or shorter ``train.steps`` keeps the original LR schedule (``optim.schedule_steps``
    is set to its length) unless ``rebuild_schedule``.
    """
    run_dir = pathlib.Path(cfg.train.run_dir)
    saved = run_dir / "config.json"
    holds_run = saved.exists() or (run_dir / "checkpoints").exists()
    notes = []
    if holds_run and not resume:
        raise RunDirError(f"run dir {str(run_dir)!r} already holds a run; pass --resume to "
                          "continue it or set train.run_dir to a new directory")
    if resume and not holds_run:
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.json)"
        notes.append(f"--resume: run dir {str(run_dir)!r} {what}; starting a new run")
    if holds_run:
        old = _flatten(_current_schema(json.loads(saved.read_text()))) if saved.exists() else {}
        new = _flatten(config_lib.to_dict(cfg))
        if old and cfg.optim.schedule_steps is None:
            length = old.get("optim.schedule_steps") or old.get("train.steps")
            if rebuild_schedule:
                if length != cfg.train.steps:
                    notes.append(f"LR schedule rebuilt over train.steps={cfg.train.steps} "
                                 f"(was {length} steps; --rebuild-schedule)")
            elif length != cfg.train.steps:
                cfg.optim.schedule_steps = int(length)
                new["optim.schedule_steps"] = int(length)
                if old.get("train.steps") != cfg.train.steps:
                    notes.append(f"train.steps {old.get('train.steps')} -> {cfg.train.steps}: "
                                 f"the LR schedule keeps its original length ({length} steps; "
                                 "pass --rebuild-schedule to stretch it over the new steps)")
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise RunDirError(f"cannot resume {str(run_dir)!r} with a different config: "
                              + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    return notes


def prepare_run_dir(cfg: Config, resume: bool, *, rebuild_schedule: bool = False) -> pathlib.Path:
    """Creates the run dir (or checks that resuming it is consistent) and saves config.json."""
    check_run_dir(cfg, resume, rebuild_schedule=rebuild_schedule)
    run_dir = pathlib.Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.json", config_lib.to_json(cfg) + "\n")
    return run_dir


def _current_schema(saved: dict) -> dict:
    """A saved config in today's layout (e.g. ``data.tokenizer: "byte"`` -> its section)."""
    try:
        return config_lib.to_dict(config_lib.from_dict(saved))
    except ConfigError:
        return saved


load_run_config = config_lib.load_run_config
