"""What the trainer needs from the data pipeline, built from a Config.

``TrainData`` bundles the domains, their train token counts (for the
``natural`` / ``temperature`` mixtures and the importance-sampling ``p``), the
tokenizer's ids, the fixed eval sets and a factory for the sampler (its
initial weights depend on the mixer, which is built after the data).

A sampler is anything with ``__next__() -> {"tokens", "domain_id", ...}``,
``set_weights(w, step)``, ``weights_for(step)``, ``get_state()``,
``set_state(s)`` and ``lag``: :class:`mixjax.data.DomainSampler`, or a fake in
tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import numpy as np

from mixjax import config as config_lib
from mixjax.config import Config, ConfigError


@dataclasses.dataclass
class TrainData:
    domains: tuple[str, ...]
    token_counts: tuple[float, ...]
    vocab_size: int
    pad_id: int
    eval_sets: Mapping[str, np.ndarray]
    make_sampler: Callable[[np.ndarray], Any]
    # Domains that are evaluated but never trained on (an out-of-domain grads.target);
    # their eval sets are in eval_sets.
    heldout_domains: tuple[str, ...] = ()
    # {grads.target: int32[N, S+1]}: the target batch, always from the validation split
    # (whatever eval.split is), so an evaluation on the test split stays unseen.
    target_sets: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # sha256 of the eval sets (mixjax.data.eval_sets.eval_checksum), recorded in run_info.json
    eval_checksum: str | None = None
    # The tokenizer's describe() plus its checksum (recorded in run_info.json).
    tokenizer: dict | None = None
    # data.selection's file, mode and sha256 (mixjax.data.selection; run_info.json), or None
    selection: dict | None = None


def _all_sources(cfg: Config):
    from mixjax import data
    if cfg.data.spec is not None:
        import json
        import pathlib
        path = pathlib.Path(cfg.data.spec)
        if not path.is_file():
            raise ConfigError(f"config key 'data.spec': file {str(path)!r} does not exist")
        spec = json.loads(path.read_text())
        for item in spec.get("domains", ()):   # data.text_field / data.on_error: defaults per domain
            item.setdefault("text_field", cfg.data.text_field)
            item.setdefault("on_error", cfg.data.on_error)
        sources = data.DatasetSpec.from_dict(spec).sources()
    else:
        sources = data.corpus_sources(cfg.data.corpus, text_field=cfg.data.text_field,
                                      on_error=cfg.data.on_error)
    floors = split_floors(cfg, sources)
    if floors is not None:
        from mixjax.data import splits
        splits.set_floors(sources, floors, reason=" by data.split_min_docs/split_min_bytes")
    return sources


def split_fractions(cfg: Config) -> dict[str, float]:
    from mixjax.data import splits
    return dict(splits.DEFAULT_FRACTIONS if cfg.data.split_fractions is None else cfg.data.split_fractions)


def split_floors(cfg: Config, sources) -> Any:
    """The floors the config sets (None: keep each source's own, e.g. a corpus's)."""
    from mixjax.data import splits
    d = cfg.data
    if d.split_min_docs is None and d.split_min_bytes is None:
        return None
    own = [splits.source_floors(s) for s in sources.values()]
    base = next((f for f in own if f is not None), splits.Floors())
    return splits.Floors(base.min_docs if d.split_min_docs is None else int(d.split_min_docs),
                         base.min_bytes if d.split_min_bytes is None else int(d.split_min_bytes))


def _sources(cfg: Config):
    """``(training sources, held-out target sources)``."""
    sources = _all_sources(cfg)
    everything = dict(sources)
    if cfg.data.domains is not None:
        unknown = sorted(set(cfg.data.domains) - set(sources))
        if unknown:
            raise ConfigError(f"config key 'data.domains': unknown domain(s) {unknown}; "
                              f"known: {sorted(sources)}")
        sources = {d: sources[d] for d in cfg.data.domains}
    heldout = {}
    for target in target_domains(cfg):
        if target in sources:
            continue
        if target not in everything:
            raise ConfigError(f"config key 'grads.target': unknown domain {target!r}; "
                              f"training domains: {sorted(sources)}, held-out candidates: "
                              f"{sorted(set(everything) - set(sources))}")
        heldout[target] = everything[target]   # out-of-domain target: never trained on
    return sources, heldout


def target_domains(cfg: Config) -> tuple[str, ...]:
    """``grads.target`` as a tuple of domains (empty when unset)."""
    t = cfg.grads.target
    return () if t is None else (t,) if isinstance(t, str) else tuple(t)


def build_tokenizer(cfg: Config):
    """``(tokenizer, model vocabulary size)`` from ``data.tokenizer`` and ``model.vocab_size``."""
    from mixjax.data import tokenizers
    tc = cfg.data.tokenizer
    try:
        tok = tokenizers.from_config(tc.kind, tc.path, tc.args)
    except (KeyError, FileNotFoundError, tokenizers.TokenizerError) as e:
        key = "data.tokenizer.path" if isinstance(e, FileNotFoundError) or tc.path else \
            "data.tokenizer"
        raise ConfigError(f"config key {key!r}: {e.args[0] if e.args else e}") from None
    vocab = tokenizers.model_vocab_size(tok, tc.vocab_multiple)
    if cfg.model.vocab_size is not None:
        if cfg.model.vocab_size < tok.vocab_size:
            raise ConfigError(f"config key 'model.vocab_size': {cfg.model.vocab_size} is smaller "
                              f"than tokenizer {tc.kind!r}'s {tok.vocab_size} ids (specials "
                              f"included); raise it or leave it None")
        vocab = cfg.model.vocab_size
    return tok, vocab


def build_data(cfg: Config) -> TrainData:
    config_lib.validate(cfg)   # also turns shorthand sections (`data.tokenizer = "byte"`) into theirs
    from mixjax import data
    from mixjax.data import token_cache
    tok, vocab = build_tokenizer(cfg)
    sources, heldout = _sources(cfg)
    domains = tuple(sources)
    fractions = split_fractions(cfg)
    seed = cfg.train.seed if cfg.data.seed is None else cfg.data.seed
    # data.selection: each domain's train split, selected (mixjax.data.selection); the
    # sampler and the token counts then read these with split=None.
    train_sources, train_split, selection_info = _selected_train(cfg, sources, fractions, seed)
    # The splits depend on the fractions and on each source's floors: both are in the key.
    floors = {d: repr(getattr(s, "split_floors", None)) for d, s in {**sources, **heldout}.items()}
    cache = token_cache.resolve_dir(cfg.data.cache_dir)
    key = token_cache.cache_key("token_counts", tok, train_sources, split=train_split,
                                split_fractions=fractions, floors=floors)
    n, _ = token_cache.cached_arrays(cache, key, lambda: {
        d: np.asarray(c, np.int64)
        for d, c in data.token_counts(train_sources, tokenizer=tok, split=train_split,
                                      split_fractions=fractions).items()})
    counts = tuple(float(n[d]) for d in domains)   # incl. one EOS per doc
    everything = {**sources, **heldout}
    key = token_cache.cache_key("eval_sets", tok, everything, seq_len=cfg.data.seq_len,
                                split=cfg.eval.split, num_sequences=cfg.eval.num_seqs,
                                split_fractions=fractions, floors=floors)
    eval_sets, _ = token_cache.cached_arrays(cache, key, lambda: data.eval_arrays(
        everything, seq_len=cfg.data.seq_len, split=cfg.eval.split,
        num_sequences=cfg.eval.num_seqs, tokenizer=tok, split_fractions=fractions))
    target_sets = {}
    targets = target_domains(cfg)
    if targets:
        target_sets = (eval_sets if cfg.eval.split == "validation" else data.eval_arrays(
            {t: {**sources, **heldout}[t] for t in targets}, seq_len=cfg.data.seq_len,
            split="validation", num_sequences=cfg.eval.num_seqs, tokenizer=tok,
            split_fractions=fractions))
        target_sets = {t: target_sets[t] for t in targets}

    def make_sampler(weights: np.ndarray):
        sampler_cls = data.DomainSampler
        if selection_info is not None and selection_info["mode"] == "weight":
            from mixjax.data import selection   # batches also hold sample_weight f32[B]
            sel = selection.load(cfg.data.selection.path)
            sampler_cls = functools.partial(selection.weighted_sampler, selection=sel)
        return sampler_cls(train_sources, split=train_split, seq_len=cfg.data.seq_len,
                                  batch_size=cfg.data.batch_size, weights=np.asarray(weights),
                                  tokenizer=tok, mode=cfg.data.sampler, lag=cfg.data.lag,
                                  seed=seed, num_workers=cfg.data.workers,
                                  split_fractions=fractions,
                                  token_store=cfg.data.token_store,
                                  cache_dir=cfg.data.cache_dir,
                                  # multi-host: this process reads only its share of each
                                  # domain and returns its rows of the global batch
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())

    return TrainData(domains=domains, token_counts=counts, vocab_size=vocab,
                     pad_id=tok.pad_id, eval_sets=eval_sets, make_sampler=make_sampler,
                     heldout_domains=tuple(heldout), target_sets=target_sets,
                     eval_checksum=data.eval_sets.eval_checksum(eval_sets, tok.checksum()),
                     tokenizer={**tok.describe(), "checksum": tok.checksum()},
                     selection=selection_info)


def _selected_train(cfg: Config, sources, fractions, seed: int):
    """``(sources, split, info)`` the sampler and the token counts read: the sources and
    ``"train"`` without a selection; else each domain's train split with
    ``data.selection`` applied, ``None`` (already split) and the selection's record."""
    sel_cfg = cfg.data.selection
    if not sel_cfg.path:
        return sources, "train", None
    from mixjax.data import selection, splits
    try:
        sel = selection.load(sel_cfg.path)
    except FileNotFoundError as e:
        raise ConfigError(f"config key 'data.selection.path': {e}") from None
    selection.check_corpus(sources, sel)   # a set-level selection lists the whole corpus
    if sel_cfg.mode == "weight":   # every document kept; the sampler weights the sequences
        return sources, "train", sel.info(sel_cfg.mode)
    train = splits.split_sources(sources, "train", fractions=fractions)
    return selection.select_all(train, sel, sel_cfg.mode, seed=seed), None, sel.info(sel_cfg.mode)
