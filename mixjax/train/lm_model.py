"""The LM's model from a run Config (the vocabulary comes from the data)."""

from __future__ import annotations

from mixjax.config import Config, ConfigError


def model_config(cfg: Config, vocab_size: int):
    """The ``TransformerConfig`` of ``cfg.model`` (the vocabulary comes from the data); other
    kinds: ``mixjax.models.registry.build(cfg.model, vocab_size).config``."""
    from mixjax.models import registry as model_registry
    return model_registry.transformer_config(cfg.model, vocab_size)


def build_model(cfg: Config, vocab_size: int):
    """The :class:`~mixjax.models.registry.ModelSpec` of ``model.kind``; a bad kind or
    hyperparameter is a config error naming ``model.kind`` / ``model.hparams``."""
    from mixjax.models import registry as model_registry
    try:
        return model_registry.build(cfg.model, vocab_size)
    except KeyError as e:
        raise ConfigError(f"config key 'model.kind': {e.args[0]}") from None
    except (ValueError, TypeError) as e:
        key = "model" if cfg.model.kind == "transformer" else "model.hparams"
        raise ConfigError(f"config key {key!r}: {e}") from None
