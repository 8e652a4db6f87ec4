"""The checks of a config that need the registries (mixers, Methods, trackers) or this
machine, run when a run is built: by ``mixjax train`` before anything expensive starts
(each names its key, exit code 2) and by the loop and the multi-run commands.

``mixjax.config`` checks only the values, and never imports a registry, so a stored
run's ``config.json`` always loads (``mixjax eval`` / ``mixjax export`` of a run trained
with an out-of-tree mixer work whether or not its plugin is importable).
"""

from __future__ import annotations

import pathlib

from mixjax.config import Config, ConfigError, check_hparams


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r}: {msg}")


def check_names(cfg: Config) -> Config:
    """``mixing.name``, ``mixing.hparams``, ``mixing.sample_reweight*``, ``train.objective*``,
    ``model.kind`` and ``train.trackers`` name registered things with known hyperparameters (after the
    modules in ``train.plugins`` are imported: what they register counts)."""
    from mixjax import plugins
    from mixjax.train import tracking   # light: no tracker package is imported here
    t = cfg.train
    plugins.load(t.plugins, where="config key 'train.plugins':")   # what they register
    bad = tracking.check(t.trackers, t.tracker_args)
    _require(bad is None, "train.tracker_args" if bad and "tracker_args" in bad else "train.trackers",
             str(bad))
    _check_mixer(cfg)
    _check_objective(cfg)
    _check_model_kind(cfg)
    return cfg


def check_runnable(cfg: Config) -> None:
    """What a training run needs from this machine: tracker packages, ``model.init_from``."""
    from mixjax.train import tracking
    bad = tracking.check(cfg.train.trackers, cfg.train.tracker_args, installed=True)
    _require(bad is None, "train.trackers", str(bad))
    m = cfg.model
    _require(m.init_from is None or pathlib.Path(m.init_from).exists(), "model.init_from",
             f"no such file or directory: {m.init_from!r}")


def _check_model_kind(cfg: Config) -> None:
    """``model.kind`` names a registered model (mixjax.models.registry)."""
    from mixjax.models import registry as model_registry   # light: imports no model
    try:
        model_registry.check(cfg.model.kind)
    except KeyError as e:
        raise ConfigError(f"config key 'model.kind': {e.args[0]}") from None
    try:
        model_registry.check_hparams(cfg.model)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config key 'model.hparams': {e}") from None
    check_expert_axis(cfg.mesh.expert, cfg.model)
    _require(cfg.model.kind in ("transformer", "moe", "demix") or not cfg.model.init_from,
             "model.init_from", f"pretrained parameters load into model.kind 'transformer', "
             f"'moe' and 'demix' only, not model.kind={cfg.model.kind!r}")


def check_expert_axis(expert: int, model_cfg) -> None:
    """The ``expert`` mesh axis divides the MoE model's experts (a size of -1 is checked
    once the mesh is built, with its resolved size)."""
    if model_cfg.kind not in ("moe", "demix") or expert in (1, -1):
        return
    experts = (model_cfg.hparams or {}).get("num_experts")
    if experts is None:
        from mixjax.models import demix, moe
        cls = moe.MoEConfig if model_cfg.kind == "moe" else demix.DEMixConfig
        experts = cls.__dataclass_fields__["num_experts"].default
    _require(experts % expert == 0, "mesh.expert",
             f"mesh.expert={expert} does not divide model.hparams.num_experts={experts}")


def _check_objective(cfg: Config) -> None:
    """``train.objective`` names a registered Method (mixjax.methods) and its hyperparameters."""
    from mixjax import methods

    t = cfg.train
    if t.objective not in methods.names():
        raise ConfigError(f"config key 'train.objective': unknown method {t.objective!r}; "
                          f"known: {', '.join(methods.names())}")
    method = methods.get(t.objective)
    try:
        method.check(methods.resolved_hparams(t.objective, t.objective_hparams))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'train.objective_hparams': {e}") from None
    if method.uses_mixer:
        return
    # A Method that owns the weights and the model update: the mixing section must be empty.
    x = cfg.mixing
    _require(x.name == "uniform" and not x.hparams and x.apply_to is None
             and x.sample_reweight is None, "mixing.name",
             f"train.objective={t.objective!r} computes its own domain weights; leave the "
             f"mixing section at its defaults (got mixing.name={x.name!r})")
    _require(t.grad_accum == 1, "train.grad_accum",
             f"train.objective={t.objective!r} does not support gradient accumulation")
    _require(t.reference is None, "train.reference",
             f"train.objective={t.objective!r} uses no reference model")


def _check_mixer(cfg: Config) -> None:
    from mixjax import mixing

    x = cfg.mixing
    if x.name not in mixing.names():
        raise ConfigError(f"config key 'mixing.name': unknown mixer {x.name!r}; "
                          f"known: {', '.join(mixing.names())}")
    from mixjax.mixing import base as mixing_base
    known = set(mixing_base.hparam_names(x.name)) - {"apply_to_override"}
    unknown = sorted(set(x.hparams) - known)
    if unknown:
        raise ConfigError(f"config key 'mixing.hparams': mixer {x.name!r} has no "
                          f"hyperparameter(s) {unknown}; known: {sorted(known)}")
    check_hparams(mixing.mixer_class(x.name), x.hparams, "mixing.hparams")
    if x.sample_reweight is None and x.sample_reweight_hparams:
        raise ConfigError("config key 'mixing.sample_reweight_hparams' is set but "
                          "mixing.sample_reweight is None (the hyperparameters would be ignored)")
    if x.sample_reweight is not None:
        from mixjax.mixing import sample_reweight
        try:
            sample_reweight.get(x.sample_reweight, **x.sample_reweight_hparams)
        except (KeyError, TypeError, ValueError) as e:
            key = "mixing.sample_reweight" if x.sample_reweight not in sample_reweight.names() \
                else "mixing.sample_reweight_hparams"
            raise ConfigError(f"config key {key!r}: {e}") from e
