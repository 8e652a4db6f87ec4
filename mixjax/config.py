"""Typed, validated run configuration.

A config file is a Python module with ``get_config() -> Config``::

    def get_config():
        cfg = Config()
        cfg.train.steps = 200
        cfg.mixing.name = "temperature"
        return cfg

Why Python modules (not YAML/JSON): a config can compute values (a model size
from a width, a schedule from the step count), import constants, share a base
with ``from configs.lm_tiny_uniform import get_config as base``, and carries
its docstring (command + expected result) next to the values; the result is
still a plain dataclass that is validated and written to ``config.json`` in the
run directory, so what ran is always recorded as data.

Overrides use dotted keys, values parsed as Python literals (strings may be
bare)::

    mixjax train configs/lm_tiny_uniform.py --set train.steps=200 \
        --set mixing.name=temperature --set mixing.hparams.tau=3.0

Every error (unknown key, wrong type, impossible value) raises
:class:`ConfigError` naming the key, before anything is built or compiled (the typing
engine: :mod:`mixjax.config_engine`). This module imports nothing else of mixjax but
``errors``: registered names (mixers, Methods, trackers) are checked when a run is built
(``mixjax.train.checks``), so a stored run's config always loads.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

# The typing engine lives in config_engine; its public functions are part of this module's
# API (config.load, config.apply_override, config.set_value, ...).
from mixjax.config_engine import (  # noqa: F401
    _field_names, apply_override, check_hparams, check_types, parse_value, run_config_file,
    set_value)
from mixjax.errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


@dataclasses.dataclass(kw_only=True)
class TokenizerConfig:
    """``data.tokenizer``: which tokenizer (mixjax.data.tokenizers.from_config).

    ``--set data.tokenizer=hf`` sets ``kind`` alone; ``path`` is the model file
    (sentencepiece ``.model``, tiktoken ``.tiktoken`` BPE file, HF
    ``tokenizer.json`` or a directory holding one); ``args`` go to the
    tokenizer (e.g. ``{"encoding": "gpt2", "allow_download": True}``).
    The model's vocabulary is the tokenizer's rounded up to ``vocab_multiple``
    (None: 128, or 1 for ``byte`` whose 264 ids are already padded), unless
    ``model.vocab_size`` fixes it.
    """

    kind: str = "byte"                 # byte | sentencepiece | tiktoken | hf
    path: str | None = None
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    vocab_multiple: int | None = None


@dataclasses.dataclass(kw_only=True)
class SelectionConfig:
    """``data.selection``: a selection file of per-document weights (mixjax.data.selection)
    applied to each domain's train split: ``drop`` (weight 0 removed), ``resample``
    (documents drawn with probability proportional to their weight) or ``weight`` (every
    sequence's loss weighted by its documents' weights)."""

    path: str | None = None            # None: no selection
    mode: str = "drop"                 # drop | resample | weight


@dataclasses.dataclass(kw_only=True)
class DataConfig:
    corpus: str = "mixpile-tiny"       # a corpus name (mixjax.data.corpus) ...
    spec: str | None = None            # ... or a dataset-spec file (overrides corpus)
    domains: tuple[str, ...] | None = None  # a subset of the corpus' domains (None: all)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    # Tokenized token counts and eval sets of non-byte tokenizers are cached here, keyed by
    # the tokenizer's checksum and the files' sizes/mtimes (None: $MIXJAX_CACHE_DIR or
    # ~/.cache/mixjax; "": no cache).
    cache_dir: str | None = None
    # Serve the training documents from a pre-tokenised token store under cache_dir (built on
    # first use; mixjax.data.token_store): the same batches, one array slice per document
    # instead of a read + decode + tokenisation. Needs workers = 0.
    token_store: bool = False
    seq_len: int = 128
    batch_size: int = 16
    sampler: str = "multinomial"       # multinomial | stratified | per_domain
    lag: int = 1                       # new weights reach the sampler after `lag` steps
    workers: int = 0                   # grain worker processes (0: in-process)
    # Where batches are drawn: "thread" (a background thread, a queue of two batches),
    # "inline" (on the loop's thread, between the dispatch of one step and the next) or
    # "auto" (inline on the CPU backend, where the two threads only take turns holding the
    # interpreter lock; the thread on accelerators). The same batches either way
    # (mixjax.run.feeds); benchmarks/bench_host.py --prefetch both measures the two.
    prefetch: str = "auto"
    seed: int | None = None            # data seed (None: train.seed)
    # Splits (mixjax.data.splits): validation/test fractions (None: 0.02 each) and floors per
    # evaluation split (None: the corpus's own, e.g. mixpile-tiny 16 units / 16 KB; a lower
    # value is logged). Both enter the eval sets and their checksum.
    split_fractions: dict[str, float] | None = None
    split_min_docs: int | None = None
    split_min_bytes: int | None = None
    text_field: str = "text"           # JSON key of the text (corpus dirs, spec domains without one)
    on_error: str = "raise"            # bad JSONL lines: raise | skip
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    # The registered model kind (mixjax.models.registry); its own knobs go in hparams.
    kind: str = "transformer"
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    vocab_size: int | None = None      # None: from the tokenizer (data.tokenizer.vocab_multiple)
    # Start from these parameters: a mixjax run dir (its latest checkpoint) or a
    # safetensors file / HF Llama directory (mixjax.models.hf_io).
    init_from: str | None = None
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int | None = None
    mlp: str = "swiglu"                # swiglu | gelu
    tie_embeddings: bool = True
    dtype: str = "float32"             # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    scan_layers: bool = False          # blocks stacked on a "layers" axis, run by nnx.scan
    remat: str = "none"                # none | dots | full (docs/scaling.md)
    # auto | xla | cudnn | splash: auto = cuDNN flash attention on a GPU (bf16/fp16 compute),
    # the Pallas splash kernel on a TPU, xla otherwise (mixjax.models.transformer)
    attention: str = "auto"
    loss_chunk: int = 0                # positions per cross-entropy chunk; 0 = full logits


@dataclasses.dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-3                   # peak learning rate
    warmup_steps: int = 20
    decay: str = "cosine"              # cosine | linear | constant
    min_lr_ratio: float = 0.1          # final lr = min_lr_ratio * lr
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0      # global-norm clipping (None: off)
    # Length of the LR schedule (None: train.steps). A resume that extends train.steps
    # sets it to the original length, so the LR keeps its course (--rebuild-schedule:
    # None, the schedule stretched over the new train.steps).
    schedule_steps: int | None = None


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    steps: int = 100
    seed: int = 0
    eval_every: int = 50               # 0: only at the end
    ckpt_every: int = 50               # 0: only at the end (and on SIGTERM/SIGINT)
    keep_ckpts: int = 2
    # A checkpoint's save runs on a background thread after a copy of the state on the
    # devices (mixjax.train.checkpoint, defer): the loop does not wait for orbax's save
    # call; the devices hold a second copy of the state meanwhile. False: the loop waits
    # until the arrays are copied off the devices, with no second copy.
    ckpt_defer: bool = True
    log_every: int = 1
    run_dir: str = "runs/default"
    grad_accum: int = 1                # micro-batches per step
    reference: str | None = None       # run dir of a frozen reference model (ref_loss)
    progress: bool = True              # tqdm bar
    # Where metrics are mirrored besides the JSONL files (mixjax.train.tracking):
    # tensorboard, wandb; tracker_args[name] configures one, e.g. {"wandb": {"project": "p"}}.
    trackers: tuple[str, ...] = ("tensorboard",)
    tracker_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The Method that defines the step (mixjax.methods): "mixer" (one model, the mixing
    # section's weights act on sampling/loss), "bilevel" (ScaleBiO), "fish" (Fish meta step).
    objective: str = "mixer"
    objective_hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Modules imported before the run is built (out-of-tree mixers, Methods, statistics:
    # mixjax.plugins); `mixjax train --plugin M` adds M. Recorded, so `mixjax eval` /
    # `mixjax export` of the run import them again.
    plugins: tuple[str, ...] = ()


@dataclasses.dataclass(kw_only=True)
class MixingConfig:
    name: str = "uniform"
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    apply_to: str | None = None        # sampling | loss | both (None: the mixer's default)
    # The sampler's own weights p when apply_to == "loss" (tokens get w_d / p_d).
    sampling_weights: str = "natural"  # natural | uniform
    sample_reweight: str | None = None  # per-sequence loss reweighting (mixing.sample_reweight)
    sample_reweight_hparams: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class EvalConfig:
    num_seqs: int = 16                 # validation sequences per domain
    batch_size: int = 32
    split: str = "validation"
    target_mixture: dict[str, float] | None = None  # None: uniform over domains


@dataclasses.dataclass(kw_only=True)
class MeshConfig:
    """Device mesh sizes; one of them may be -1: all remaining devices."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1     # expert parallelism (model.kind=moe): experts split over it


@dataclasses.dataclass(kw_only=True)
class GradsConfig:
    """Per-domain gradient statistics (mixjax.mixing.grads); used only if the mixer needs them."""

    strategy: str = "vmap"             # vmap | jvp | chunked
    layout: str = "stratified"         # vmap: stratified (B/K rows per domain) | rows (any batch)
    chunk_size: int = 1                # chunked: domains per group
    param_filter: str | None = None    # regex on parameter paths for the statistics
    # domain whose validation split gives g_target (grad_dot); a list of domains gives one
    # target gradient each (mixers with multi_target, e.g. DoGE's out-of-domain rule)
    target: str | tuple[str, ...] | None = None
    jvp_microbatches: int | None = None  # jvp: tangent pass in M micro-batches (None: 4/2/1)


@dataclasses.dataclass(kw_only=True)
class Config:
    name: str = "run"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mixing: MixingConfig = dataclasses.field(default_factory=MixingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    grads: GradsConfig = dataclasses.field(default_factory=GradsConfig)


# -- loading and overrides ---------------------------------------------------
def load(path: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Runs ``get_config()`` of the file at ``path`` (a ``.json`` file: a run dir's saved
    ``config.json``, e.g. one ``mixjax demix --out-run`` wrote), applies overrides, validates."""
    p = pathlib.Path(path)
    if p.suffix == ".json":
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            cfg = from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not a JSON config ({e})") from None
    else:
        cfg = run_config_file(path, Config)
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r}: {msg}")


def validate(cfg: Config) -> Config:
    """Checks types and values; raises ConfigError naming the first bad key.

    Names of registered things (mixers, Methods, trackers) are not checked here: config
    loading imports no registry, so a stored run's config loads even where the mixer it
    names is not importable. ``mixjax.train.checks.check_names`` checks them when a run is
    built (``mixjax train`` runs it before anything expensive)."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a Config, got {type(cfg).__name__}")
    check_types(cfg)
    d, m, o, t, x, e, g = cfg.data, cfg.model, cfg.optim, cfg.train, cfg.mixing, cfg.eval, cfg.grads
    _require(d.seq_len >= 2, "data.seq_len", f"must be >= 2, got {d.seq_len}")
    _require(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _require(d.sampler in ("multinomial", "stratified", "per_domain"), "data.sampler",
             f"must be multinomial, stratified or per_domain, got {d.sampler!r}")
    _require(d.lag >= 1, "data.lag", f"must be >= 1, got {d.lag}")
    _require(d.workers >= 0, "data.workers", f"must be >= 0, got {d.workers}")
    _require(d.prefetch in ("auto", "thread", "inline"), "data.prefetch",
             f"must be 'auto', 'thread' or 'inline', got {d.prefetch!r}")
    _require(not (d.token_store and d.workers), "data.token_store",
             f"the store is read in this process: needs data.workers=0, got {d.workers}")
    if d.split_fractions is not None:
        bad = sorted(set(d.split_fractions) - {"validation", "test"})
        _require(not bad, "data.split_fractions", f"unknown split(s) {bad}; use validation/test")
        _require(all(0 <= float(v) < 1 for v in d.split_fractions.values())
                 and sum(float(v) for v in d.split_fractions.values()) < 1, "data.split_fractions",
                 f"fractions must be in [0, 1) and sum to < 1, got {d.split_fractions}")
    for key in ("split_min_docs", "split_min_bytes"):
        v = getattr(d, key)
        _require(v is None or v >= 0, f"data.{key}", f"must be >= 0, got {v}")
    _require(d.selection.mode in ("drop", "resample", "weight"), "data.selection.mode",
             f"must be drop, resample or weight, got {d.selection.mode!r}")
    _require(d.on_error in ("raise", "skip"), "data.on_error", f"must be raise or skip, got {d.on_error!r}")
    _require(bool(d.text_field), "data.text_field", "must not be empty")
    tk = d.tokenizer
    _require(tk.kind in ("byte", "sentencepiece", "tiktoken", "hf"), "data.tokenizer.kind",
             f"must be byte, sentencepiece, tiktoken or hf, got {tk.kind!r}")
    _require(tk.kind != "byte" or not tk.path, "data.tokenizer.path",
             f"the byte tokenizer takes no file, got {tk.path!r}")
    _require(tk.kind not in ("sentencepiece", "hf") or bool(tk.path), "data.tokenizer.path",
             f"tokenizer {tk.kind!r} needs a file: set data.tokenizer.path")
    _require(tk.vocab_multiple is None or tk.vocab_multiple >= 1, "data.tokenizer.vocab_multiple",
             f"must be >= 1 or None, got {tk.vocab_multiple}")
    _require(m.vocab_size is None or m.vocab_size >= 1, "model.vocab_size",
             f"must be >= 1 or None, got {m.vocab_size}")
    if d.domains is not None:
        _require(len(d.domains) >= 1 and len(set(d.domains)) == len(d.domains), "data.domains",
                 f"must be distinct and non-empty, got {d.domains}")
    for key in ("d_model", "num_layers", "num_heads"):
        _require(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    _require(m.d_model % m.num_heads == 0, "model.num_heads",
             f"d_model={m.d_model} is not divisible by num_heads={m.num_heads}")
    _require((m.d_model // m.num_heads) % 2 == 0, "model.num_heads",
             "head dimension d_model/num_heads must be even (RoPE)")
    _require(m.d_ff is None or m.d_ff >= 1, "model.d_ff", f"must be >= 1, got {m.d_ff}")
    _require(m.mlp in ("swiglu", "gelu"), "model.mlp", f"must be swiglu or gelu, got {m.mlp!r}")
    _require(m.remat in ("none", "dots", "full"), "model.remat",
             f"must be none, dots or full, got {m.remat!r}")
    for key in ("dtype", "param_dtype"):
        _require(getattr(m, key) in ("float32", "bfloat16", "float16"), f"model.{key}",
                 f"must be float32, bfloat16 or float16, got {getattr(m, key)!r}")
    _require(m.attention in ("auto", "xla", "cudnn", "splash"), "model.attention",
             f"must be auto, xla, cudnn or splash, got {m.attention!r}")
    _require(m.loss_chunk >= 0, "model.loss_chunk",
             f"must be >= 0 (0 = unchunked), got {m.loss_chunk}")
    _require(m.norm_eps > 0, "model.norm_eps", f"must be > 0, got {m.norm_eps}")
    _require(m.init_std > 0, "model.init_std", f"must be > 0, got {m.init_std}")
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _require(o.decay in ("cosine", "linear", "constant"), "optim.decay",
             f"must be cosine, linear or constant, got {o.decay!r}")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(0 <= o.b1 < 1, "optim.b1", f"must be in [0, 1), got {o.b1}")
    _require(0 <= o.b2 < 1, "optim.b2", f"must be in [0, 1), got {o.b2}")
    _require(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _require(o.schedule_steps is None or o.schedule_steps >= 1, "optim.schedule_steps",
             f"must be None or >= 1, got {o.schedule_steps}")
    _require(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip",
             f"must be > 0 or None, got {o.grad_clip}")
    _require(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    for key in ("eval_every", "ckpt_every"):
        _require(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    _require(t.keep_ckpts >= 1, "train.keep_ckpts", f"must be >= 1, got {t.keep_ckpts}")
    _require(isinstance(t.ckpt_defer, bool), "train.ckpt_defer",
             f"must be true or false, got {t.ckpt_defer!r}")
    _require(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    _require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _require(d.batch_size % t.grad_accum == 0, "train.grad_accum",
             f"data.batch_size={d.batch_size} is not divisible by grad_accum={t.grad_accum}")
    _require(bool(t.run_dir), "train.run_dir", "must not be empty")
    _require(all(isinstance(m, str) and m.strip() and " " not in m.strip() for m in t.plugins),
             "train.plugins", f"must be module names, got {list(t.plugins)}")
    _require(x.apply_to in (None, "sampling", "loss", "both"), "mixing.apply_to",
             f"must be sampling, loss, both or None, got {x.apply_to!r}")
    _require(x.sampling_weights in ("natural", "uniform"), "mixing.sampling_weights",
             f"must be natural or uniform, got {x.sampling_weights!r}")
    _require(e.num_seqs >= 1, "eval.num_seqs", f"must be >= 1, got {e.num_seqs}")
    _require(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
    _require(e.split in ("validation", "test"), "eval.split",
             f"must be validation or test, got {e.split!r}")
    if e.target_mixture is not None:
        bad = {k: v for k, v in e.target_mixture.items() if not (v >= 0)}
        _require(not bad and sum(e.target_mixture.values()) > 0, "eval.target_mixture",
                 f"weights must be >= 0 and not all 0, got {e.target_mixture}")
    for key in ("data", "fsdp", "tensor", "expert"):
        _require(getattr(cfg.mesh, key) >= 1 or getattr(cfg.mesh, key) == -1, f"mesh.{key}",
                 f"must be >= 1 or -1 (all remaining devices), got {getattr(cfg.mesh, key)}")
    free = [k for k in ("data", "fsdp", "tensor", "expert") if getattr(cfg.mesh, k) == -1]
    _require(len(free) <= 1, f"mesh.{free[-1] if free else 'data'}",
             f"at most one mesh axis may be -1 (the rest), got -1 for {free}")
    _require(g.strategy in ("vmap", "jvp", "chunked"), "grads.strategy",
             f"must be vmap, jvp or chunked, got {g.strategy!r}")
    _require(g.chunk_size >= 1, "grads.chunk_size", f"must be >= 1, got {g.chunk_size}")
    _require(g.jvp_microbatches is None or g.jvp_microbatches >= 1, "grads.jvp_microbatches",
             f"must be >= 1 or None, got {g.jvp_microbatches}")
    _require(g.jvp_microbatches is None or d.batch_size % g.jvp_microbatches == 0,
             "grads.jvp_microbatches", f"data.batch_size={d.batch_size} is not divisible by "
             f"{g.jvp_microbatches}")
    _require(g.layout in ("stratified", "rows"), "grads.layout",
             f"must be stratified or rows, got {g.layout!r}")
    _require(not isinstance(g.target, tuple) or (g.target and len(set(g.target)) == len(g.target)),
             "grads.target", f"a list of target domains must be non-empty and without repeats, "
             f"got {g.target!r}")
    return cfg


def check_domains(cfg: Config, domains: tuple[str, ...]) -> None:
    """Checks the domain-dependent keys once the data's domains are known."""
    k = len(domains)
    if cfg.data.sampler == "per_domain":
        _require(cfg.data.batch_size >= k, "data.batch_size",
                 f"per_domain sampling needs at least one sequence per domain: "
                 f"batch_size={cfg.data.batch_size} < {k} domains")
    if cfg.eval.target_mixture is not None:
        unknown = sorted(set(cfg.eval.target_mixture) - set(domains))
        _require(not unknown, "eval.target_mixture",
                 f"unknown domain(s) {unknown}; known: {list(domains)}")


# -- serialisation -------------------------------------------------------------
def load_run_config(run_dir: str | pathlib.Path) -> Config:
    """The Config a run dir's ``config.json`` holds."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run dir (no config.json)")
    return from_dict(json.loads(path.read_text()))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (validated)."""
    cfg = Config()
    for section, values in d.items():
        if isinstance(values, dict) and section in _field_names(cfg) and \
                dataclasses.is_dataclass(getattr(cfg, section)):
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value)
        else:
            set_value(cfg, section, values)
    return validate(cfg)
