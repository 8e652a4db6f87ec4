"""The LM's model config from a run Config (the vocabulary comes from the data)."""

from __future__ import annotations

import dataclasses

from mixjax.config import Config


def model_config(cfg: Config, vocab_size: int):
    from mixjax.models.transformer import TransformerConfig
    arch = {k: v for k, v in dataclasses.asdict(cfg.model).items()
            if k not in ("vocab_size", "init_from")}   # the vocabulary comes from the data
    return TransformerConfig(vocab_size=vocab_size, **arch)
