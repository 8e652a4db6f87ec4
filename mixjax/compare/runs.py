"""Runs of a comparison: the grid (configs x seeds) that ``mixjax compare`` trains or reuses,
and the finished runs it reads back (final validation/test evaluation, weights, losses).

A grid run lives in ``OUT/runs/<name>-seed<s>-<hash>`` where ``hash`` is the run
identity of the resolved config (:func:`mixjax.run_identity.config_hash`: every key
except the result-neutral ones, ``run_identity.NEUTRAL_KEYS``). A run whose directory
holds a finished run (``run_identity.train_or_reuse``'s marker; a run finished before
the marker existed counts when it has its final evaluation at ``train.steps``) is
reused; an interrupted one is resumed; a changed config has another hash, hence another
directory, and never reuses old results.

Fairness (checked before anything trains, :class:`CompareError` otherwise):
every config runs with the same seeds (``train.seed = data.seed = s``, so
initialisation and data order agree per seed across methods), the same token
budget (``steps x batch_size x seq_len``), the same tokenizer and the same eval
sets (the sha256 of the validation eval sets, :func:`mixjax.data.eval_sets.eval_checksum`,
recorded in each run's ``run_info.json``; the test sets are checked the same way
when they are evaluated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from mixjax import config as config_lib
from mixjax import run_identity
from mixjax.run.signals import Interrupted
from mixjax.train import checks
from mixjax.config import Config, ConfigError
from mixjax.run_identity import config_hash  # noqa: F401  (re-exported: compare.config_hash)


class CompareError(ValueError):
    """Bad input to ``mixjax compare`` (message names the culprit); exit code 2."""


@dataclasses.dataclass
class GridRun:
    method: str             # the config's name (the row of the table)
    seed: int
    cfg: Config
    hash: str

    @property
    def run_dir(self) -> pathlib.Path:
        return pathlib.Path(self.cfg.train.run_dir)


def plan_grid(config_paths: Sequence[Any], seeds: int, overrides: Sequence[str], out: pathlib.Path) -> list[GridRun]:
    """Resolve every (config file or :class:`Config`, seed) and check the grid is a fair comparison."""
    if seeds < 1:
        raise CompareError(f"--seeds must be >= 1, got {seeds}")
    if not config_paths:
        raise CompareError("give at least one CONFIG (or --runs RUN_DIR...)")
    grid, names = [], {}
    for path in config_paths:
        try:
            if isinstance(path, Config):    # a Config built in Python (experiments/leaderboard_mixpile.py)
                base = config_lib.from_dict(config_lib.to_dict(path))
                for item in overrides:
                    config_lib.apply_override(base, item)
                config_lib.validate(base)
                path = base.name
            else:
                base = config_lib.load(path, list(overrides))
        except ConfigError as e:
            raise CompareError(f"config {path}: {e}") from None
        name = base.name
        if name in names and names[name] != path:
            name = f"{name}@{pathlib.Path(path).stem}"
        names[name] = path
        for s in range(seeds):
            cfg = config_lib.from_dict(config_lib.to_dict(base))
            cfg.name = name
            cfg.train.seed = s
            cfg.data.seed = s
            h = config_hash(cfg)
            cfg.train.run_dir = str(out / "runs" / f"{_safe(name)}-seed{s}-{h[:12]}")
            config_lib.validate(cfg)
            try:
                checks.check_names(cfg)
            except ConfigError as e:
                raise CompareError(f"config {path}: {e}") from None
            grid.append(GridRun(name, s, cfg, h))
    _check_same(grid, "token budget (train.steps x data.batch_size x data.seq_len)",
                lambda r: r.cfg.train.steps * r.cfg.data.batch_size * r.cfg.data.seq_len)
    _check_same(grid, "tokenizer (data.tokenizer)", _tokenizer_key)
    _check_same(grid, "eval sets (data.corpus/spec/domains, data.seq_len, data.split_*, eval.num_seqs, eval.split)",
                lambda r: json.dumps([r.cfg.data.corpus, r.cfg.data.spec, r.cfg.data.domains, r.cfg.data.seq_len,
                                      r.cfg.data.split_fractions, r.cfg.data.split_min_docs,
                                      r.cfg.data.split_min_bytes, r.cfg.eval.num_seqs, r.cfg.eval.split],
                                     default=str))
    return grid


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _tokenizer_key(r) -> str:
    """The ``data.tokenizer`` section as canonical JSON (kind, path, args, vocab_multiple)."""
    return json.dumps(dataclasses.asdict(r.cfg.data.tokenizer), sort_keys=True, default=str)


def _check_same(items, what: str, key) -> None:
    groups: dict[Any, list[str]] = {}
    for r in items:
        groups.setdefault(key(r), []).append(getattr(r, "label", None) or f"{r.method} (seed {r.seed})")
    if len(groups) > 1:
        parts = "; ".join(f"{v!s}: {', '.join(sorted(set(n)))}" for v, n in groups.items())
        raise CompareError(f"runs differ in {what}, so they cannot share one table: {parts}")


def finished(run_dir: pathlib.Path, steps: int) -> bool:
    """A run dir holds a run that finished before the marker existed: config.json and an
    evaluation at step ``steps``."""
    from mixjax.train import metrics
    if not (run_dir / "config.json").is_file():
        return False
    return any(r.get("step") == steps for r in metrics.read_jsonl(run_dir / "eval.jsonl"))


def run_grid(grid: Sequence[GridRun], progress: bool = True) -> dict[str, int]:
    """Train every run not already finished (resume interrupted ones). Returns counts."""
    from tqdm import tqdm

    from mixjax.train import loop
    done = {"reused": 0, "trained": 0, "resumed": 0}
    bar = tqdm(grid, desc="compare grid", unit="run", disable=not progress, position=0, file=sys.stderr)
    for r in bar:
        bar.set_postfix_str(f"{r.method} seed {r.seed}")
        r.cfg.train.progress = progress
        run_identity.adopt_equivalent(r.cfg, r.run_dir, f"{_safe(r.method)}-seed{r.seed}-*",
                                      log=lambda m: print(m, file=sys.stderr))

        def train(resume, r=r):
            result = loop.train(r.cfg, resume=resume)
            if result.interrupted:
                raise Interrupted(f"stopped by signal {result.signal} during {r.run_dir}; the "
                                  "same command resumes it", result.signal)
            done["resumed" if resume else "trained"] += 1
            return {"steps": result.steps_done}

        try:
            _, reused = run_identity.train_or_reuse(
                r.cfg, r.run_dir, train,
                legacy=lambda d, r=r: {} if finished(d, r.cfg.train.steps) else None)
        except run_identity.RunIdentityError as e:  # pragma: no cover - the hash is in the name
            raise CompareError(str(e)) from None
        done["reused"] += int(reused)
    bar.close()
    return done


# ---------------------------------------------------------------- reading finished runs

@dataclasses.dataclass
class RunRecord:
    run_dir: pathlib.Path
    method: str
    seed: int
    cfg: Config
    domains: tuple[str, ...]
    val: dict               # final evaluation on the validation split
    test: dict | None       # final evaluation on the test split (None when not asked)
    val_checksum: str
    test_checksum: str | None
    weight_steps: list[int]
    weights: np.ndarray     # [records, K]
    losses: dict            # {"step": [...], "loss": [...], "loss/<d>": [...]} (NaN: domain absent)
    tokens: int

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed} ({self.run_dir})"


def _data_key(cfg: Config, split: str) -> str:
    d = config_lib.to_dict(cfg)
    return json.dumps([d["data"], d["eval"], d["grads"].get("target"), split], sort_keys=True, default=str)


class _DataCache:
    """Eval data built once per distinct data config (all runs of a grid share it)."""

    def __init__(self):
        self._memo: dict[str, Any] = {}

    def get(self, cfg: Config, split: str):
        from mixjax.train.data import build_data
        key = _data_key(cfg, split)
        if key not in self._memo:
            c = config_lib.from_dict(config_lib.to_dict(cfg))
            c.eval.split = split
            self._memo[key] = build_data(c)
        return self._memo[key]


def load_run(run_dir: str | pathlib.Path, *, test: bool = True, cache: _DataCache | None = None,
             eval_cache_dir: pathlib.Path | None = None, method: str | None = None) -> RunRecord:
    """Read a finished run (CompareError naming the dir when it is not one)."""
    from mixjax.train import loop, metrics
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"{str(run_dir)!r} is not a run directory (it does not exist)")
    if not (run_dir / "config.json").is_file() or not (run_dir / "run_info.json").is_file():
        raise CompareError(f"{str(run_dir)!r} is not a run directory (no config.json / run_info.json "
                           "written by `mixjax train`)")
    try:
        cfg = loop.load_run_config(run_dir)
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        raise CompareError(f"{str(run_dir)!r}: its config.json cannot be read ({e})") from None
    info = json.loads((run_dir / "run_info.json").read_text())
    evals = [r for r in metrics.read_jsonl(run_dir / "eval.jsonl") if r.get("step") == cfg.train.steps]
    if not evals:
        raise CompareError(f"{str(run_dir)!r} is not a finished run (no evaluation at its last step "
                           f"{cfg.train.steps} in eval.jsonl); finish it with `mixjax train ... --resume`")
    domains = tuple(info["domains"])
    cache = cache or _DataCache()
    val_sum = (info.get("eval_sets") or {}).get("sha256")
    if val_sum is None:   # a run written before eval-set checksums: recompute from its config
        val_sum = cache.get(cfg, "validation").eval_checksum
    test_eval, test_sum = None, None
    if test:
        test_eval, test_sum = _test_eval(run_dir, cfg, cache, eval_cache_dir)
    wrec = metrics.read_jsonl(run_dir / "weights.jsonl")
    steps = [int(r["step"]) for r in wrec]
    weights = np.asarray([[float(r["weights"][d]) for d in domains] for r in wrec], np.float64)
    mrec = metrics.read_jsonl(run_dir / "metrics.jsonl")
    losses = {"step": [int(r["step"]) for r in mrec], "loss": [float(r["loss"]) for r in mrec]}
    for d in domains:   # "nan" (absent from the batch) -> NaN
        losses[f"loss/{d}"] = [float(r.get(f"loss/{d}", "nan")) for r in mrec]
    return RunRecord(run_dir, method or cfg.name, int(cfg.train.seed), cfg, domains, evals[-1], test_eval,
                     val_sum, test_sum, steps, weights, losses,
                     cfg.train.steps * cfg.data.batch_size * cfg.data.seq_len)


def _test_eval(run_dir: pathlib.Path, cfg: Config, cache: _DataCache, eval_cache_dir: pathlib.Path | None):
    """The final checkpoint on the test split (cached under ``eval_cache_dir``, never in the run dir)."""
    from mixjax.train import loop
    data = cache.get(cfg, "test")
    key = hashlib.sha256(f"{run_dir.resolve()}|{cfg.train.steps}|{data.eval_checksum}".encode()).hexdigest()[:16]
    path = None if eval_cache_dir is None else eval_cache_dir / f"test-{key}.json"
    if path is not None and path.is_file():
        return json.loads(path.read_text()), data.eval_checksum
    try:
        result = loop.evaluate_run(run_dir, step=cfg.train.steps, split="test", data=data)
    except FileNotFoundError as e:
        raise CompareError(f"{str(run_dir)!r}: no checkpoint of its last step to evaluate ({e})") from None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result, data.eval_checksum


def check_comparable(records: Sequence[RunRecord]) -> None:
    """Same tokenizer, same validation (and test) eval sets, same domains, or CompareError naming the runs."""
    _check_same(records, "tokenizer (data.tokenizer)", _tokenizer_key)
    _check_same(records, "training domains", lambda r: ",".join(r.domains))
    _check_same(records, "validation eval sets (eval-set sha256 in run_info.json)", lambda r: r.val_checksum)
    if all(r.test_checksum is not None for r in records):
        _check_same(records, "test eval sets (eval-set sha256)", lambda r: r.test_checksum)
