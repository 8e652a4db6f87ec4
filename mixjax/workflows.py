"""``mixjax mix``: multi-run recipes that search a data mixture, then test it.

    mixjax mix doremi CONFIG [--out DIR] [--rounds N] [--seeds N]
                             [--baseline natural|uniform] [--set K=V ...] [--base-set K=V ...]

A recipe (:class:`Recipe`) runs, for each seed s and round r::

    reference  trained on the round's reference mixture        (recipes that need one)
               round 1: the baseline mixture; round r > 1: round r-1's averaged weights
    proxy      CONFIG's mixer (e.g. doremi) against that reference -> weights (final, averaged)
    base       trained on the last round's averaged weights (manual mixture, sampling)
    baseline   trained on the baseline mixture

Base and baseline share everything but the mixture: model, steps (token
budget), seed, data seed and the same fixed validation sets; ``--base-set``
changes both (e.g. a larger base model), ``--set`` changes every run.

Outputs in ``--out``: ``weights.json`` (final and averaged proxy weights per
round, mean and std over seeds, and per seed), ``perplexity.md`` /
``perplexity.json`` (per-domain validation perplexity of base vs baseline,
mean ± std over seeds), ``weights.png`` (the proxy's weight trajectory, last
round, every seed), and one run directory per phase
(``round<r>/seed<s>/<phase>``; the baseline's is ``../mix_baselines/<mixer>-<hash>``
beside ``--out``, keyed by :func:`mixjax.run_identity.config_hash`, so every recipe
with the same config and seed reuses one finished baseline run). Each phase shows its
progress bar (``train.progress``). A phase whose run finished (the marker of
:func:`mixjax.run_identity.train_or_reuse` in its run dir; ``result.json`` of older
runs) is reused when the command is repeated with the same ``--out``, so an
interrupted recipe continues where it stopped.

Another recipe (DoGE: proxy without reference) registers a :class:`Recipe`
in ``RECIPES``; the phases, tables and plots are shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from mixjax import run_identity
from mixjax.run.signals import Interrupted
from mixjax.run_identity import config_hash  # noqa: F401  (workflows.config_hash: the one run identity)
from mixjax import atomic

BASELINES = ("natural", "uniform")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A mixture search: which mixer the proxy runs and whether it needs a reference."""

    name: str
    help: str
    mixer: str                     # the proxy config must use this mixer
    needs_reference: bool
    # (mixer, mix_state) -> (final weights, averaged weights) of the proxy run
    proxy_weights: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]] | None = None


def _mixer_weights(mixer, mix_state) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mixer.weights(mix_state), np.float64), \
        np.asarray(mixer.average(mix_state), np.float64)


RECIPES: dict[str, Recipe] = {
    "doremi": Recipe(
        name="doremi", mixer="doremi", needs_reference=True,
        help="DoReMi (Xie et al. 2023): reference -> DRO proxy -> base model vs baseline"),
    "doge": Recipe(
        name="doge", mixer="doge", needs_reference=False,
        help="DoGE (Fan et al. 2024): gradient-alignment proxy -> base model vs baseline"),
}


# -- argument parsing -----------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="recipe", required=True)
    for recipe in RECIPES.values():
        p = sub.add_parser(recipe.name, help=recipe.help)
        p.add_argument("config", help=f"the proxy's config (mixing.name = {recipe.mixer!r})")
        p.add_argument("--out", default=None,
                       help=f"output directory (default: runs/mix_{recipe.name}_<config name>)")
        p.add_argument("--rounds", type=int, default=1,
                       help="rounds; round r > 1 trains its reference on round r-1's weights")
        p.add_argument("--seeds", type=int, default=1,
                       help="repeat the whole recipe with seeds 0..N-1 (tables show mean ± std)")
        p.add_argument("--baseline", choices=BASELINES, default="natural",
                       help="the baseline mixture (and round 1's reference mixture)")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override for every run")
        p.add_argument("--base-set", dest="base_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override for the base and baseline runs only")


def run(args: argparse.Namespace) -> int:
    from mixjax import config as config_lib
    from mixjax.train import loop
    recipe = RECIPES[args.recipe]
    try:
        cfg = config_lib.load(args.config, args.overrides)
        out = pathlib.Path(args.out or f"runs/mix_{recipe.name}_{cfg.name}")
        result = run_recipe(recipe, cfg, out, rounds=args.rounds, seeds=args.seeds,
                            baseline=args.baseline, base_overrides=args.base_overrides)
    except (config_lib.ConfigError, loop.RunDirError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["table"])
    print(f"weights: {out / 'weights.json'}   plot: {out / 'weights.png'}   "
          f"({result['seconds']:.0f} s)")
    return 0


# -- the recipe -----------------------------------------------------------------
def run_recipe(recipe: Recipe, cfg, out: pathlib.Path, *, rounds: int = 1, seeds: int = 1,
               baseline: str = "natural", base_overrides: list[str] | tuple[str, ...] = (),
               log: Callable[[str], None] = print) -> dict:
    """Runs every phase for every seed and writes the outputs; returns a summary dict."""
    from mixjax import config as config_lib

    if cfg.mixing.name != recipe.mixer:
        raise ValueError(f"mixjax mix {recipe.name}: the config's mixing.name is "
                         f"{cfg.mixing.name!r}; expected {recipe.mixer!r}")
    if rounds < 1 or seeds < 1:
        raise ValueError(f"--rounds and --seeds must be >= 1, got {rounds}, {seeds}")
    if baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {BASELINES}, got {baseline!r}")
    base_cfg = _copy(cfg)
    for item in base_overrides:               # checked now, before anything trains
        config_lib.apply_override(base_cfg, item)
    config_lib.validate(base_cfg)
    from mixjax.train import checks
    for c in (cfg, base_cfg):                 # registered names, before anything trains
        checks.check_names(c)

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data_cache: dict[str, Any] = {}
    per_seed = []
    for seed in range(seeds):
        ref_mixture: dict[str, float] | None = None          # None: the baseline mixture
        round_weights = []
        for r in range(1, rounds + 1):
            where = out / f"round{r}" / f"seed{seed}"
            ref_dir = None
            if recipe.needs_reference:
                ref = _phase_config(cfg, where / "reference", seed, f"{cfg.name}_reference",
                                    mixture=ref_mixture, baseline=baseline)
                _train(ref, data_cache, log, "reference", r, seed)
                ref_dir = ref.train.run_dir
            proxy = _phase_config(cfg, where / "proxy", seed, f"{cfg.name}_proxy")
            proxy.train.reference = ref_dir
            res = _train(proxy, data_cache, log, "proxy", r, seed, recipe=recipe)
            round_weights.append(res)
            ref_mixture = res["weights_average"]
        final_mixture = round_weights[-1]["weights_average"]
        where = out / f"round{rounds}" / f"seed{seed}"
        base = _phase_config(base_cfg, where / "base", seed, f"{cfg.name}_base",
                             mixture=final_mixture)
        ref = _phase_config(base_cfg, where / "baseline", seed, f"{cfg.name}_baseline",
                            mixture=None, baseline=baseline)
        # The baseline depends on none of the recipe: one run per config hash, shared by
        # every recipe (and --out) beside this one, so `mix doge` reuses `mix doremi`'s.
        ref.train.run_dir = str(baseline_dir(out, ref))
        run_identity.adopt_equivalent(ref, ref.train.run_dir, f"{ref.mixing.name}-*", log=log)
        per_seed.append({"seed": seed, "rounds": round_weights,
                         "base": _train(base, data_cache, log, "base", rounds, seed),
                         "baseline": _train(ref, data_cache, log, "baseline", rounds, seed)})

    domains = tuple(per_seed[0]["base"]["domains"])
    summary = _write_outputs(recipe, out, domains, per_seed, baseline)
    summary["seconds"] = time.perf_counter() - t0
    atomic.write_text(out / "timing.json", json.dumps({"seconds": summary["seconds"]}) + "\n")
    return summary


def baseline_dir(out: pathlib.Path, cfg) -> pathlib.Path:
    """``<out>/../mix_baselines/<baseline>-<hash>``: the baseline run of config ``cfg``."""
    return out.absolute().parent / "mix_baselines" / f"{cfg.mixing.name}-{config_hash(cfg)[:16]}"


def _copy(cfg):
    from mixjax import config as config_lib
    return config_lib.from_dict(config_lib.to_dict(cfg))


def _phase_config(cfg, run_dir: pathlib.Path, seed: int, name: str, *,
                  mixture: dict[str, float] | None = None, baseline: str | None = None):
    """A copy of ``cfg`` for one phase; ``mixture``/``baseline`` replace its mixer."""
    c = _copy(cfg)
    c.name = name
    c.train.run_dir = str(run_dir)
    c.train.seed = seed
    c.data.seed = seed
    if mixture is not None or baseline is not None:
        c.train.reference = None
        c.mixing.apply_to = None
        c.mixing.sample_reweight = None
        c.mixing.sample_reweight_hparams = {}
        if c.data.sampler == "per_domain":   # per_domain ignores weights (a DoGE proxy's)
            c.data.sampler = "stratified"
        if mixture is not None:
            c.mixing.name, c.mixing.hparams = "manual", {"weights_by_domain": dict(mixture)}
        else:
            c.mixing.name, c.mixing.hparams = baseline, {}
    return c


def _data_for(cfg, cache: dict):
    """TrainData built once per (data config, seed): every phase sees the same eval sets."""
    from mixjax import config as config_lib
    from mixjax.train.data import build_data
    key = json.dumps([config_lib.to_dict(cfg)["data"], cfg.train.seed, cfg.eval.num_seqs,
                      cfg.eval.split], sort_keys=True)
    if key not in cache:
        cache[key] = build_data(cfg)
    return cache[key]


def _train(cfg, data_cache: dict, log, phase: str, rnd: int, seed: int,
           recipe: Recipe | None = None) -> dict:
    """Trains one phase (or reuses its finished run); returns its result record."""
    from mixjax import mixing
    from mixjax.train import loop
    run_dir = pathlib.Path(cfg.train.run_dir)

    def train(resume: bool) -> dict:
        log(f"[round {rnd} seed {seed}] {phase}: {cfg.mixing.name}, {cfg.train.steps} steps "
            f"-> {run_dir}")
        data = _data_for(cfg, data_cache)
        result = loop.train(cfg, data=data, resume=resume)
        if result.interrupted:
            raise Interrupted(f"{phase} run {run_dir} stopped by signal {result.signal}; the "
                              "same command resumes it", result.signal)
        if result.final_eval is None:
            raise RuntimeError(f"{phase} run {run_dir} finished without a final evaluation")
        domains = list(data.domains)
        rec: dict[str, Any] = {"phase": phase, "round": rnd, "seed": seed, "domains": domains,
                               "run_dir": str(run_dir),
                               "mixer": cfg.mixing.name, "steps": result.steps_done,
                               "eval": result.final_eval}
        if recipe is not None:
            mixer = mixing.build(cfg.mixing.name, cfg.mixing.hparams, domains=tuple(domains),
                                 token_counts=data.token_counts, apply_to=cfg.mixing.apply_to)
            get = recipe.proxy_weights or _mixer_weights
            final, avg = get(mixer, result.state.mix_state)
            mixing.check_weight_vector(final / final.sum(), tuple(domains), f"{phase} final weights")
            rec["weights_final"] = dict(zip(domains, (final / final.sum()).tolist()))
            rec["weights_average"] = dict(zip(domains, (avg / avg.sum()).tolist()))
        return rec

    rec, _ = run_identity.train_or_reuse(
        cfg, run_dir, train, log=lambda m: log(f"[round {rnd} seed {seed}] {phase}: {m}"))
    return rec


# -- outputs ----------------------------------------------------------------------
def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), std


def _fmt(mean: float, std: float, n: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def perplexity_table(domains, base_evals: list[dict], baseline_evals: list[dict],
                     method: str, baseline: str) -> tuple[str, dict]:
    """Markdown table of per-domain validation perplexity (mean ± std over seeds)."""
    n = len(base_evals)
    rows, data = [], {}
    keys = [(d, f"ppl/{d}") for d in domains] + [("uniform avg", "ppl_avg"),
                                                  ("worst", "ppl_worst")]
    head = f"| domain | {baseline} (baseline) | {method} | change |"
    rows += [head, "|---|---|---|---|"]
    for label, key in keys:
        b = np.array([e[key] for e in baseline_evals])
        m = np.array([e[key] for e in base_evals])
        bm, bs = _mean_std(b)
        mm, ms = _mean_std(m)
        change = 100.0 * (mm - bm) / bm
        rows.append(f"| {label} | {_fmt(bm, bs, n)} | {_fmt(mm, ms, n)} | {change:+.1f}% |")
        data[label] = {"baseline_mean": bm, "baseline_std": bs, "method_mean": mm,
                       "method_std": ms, "baseline": b.tolist(), "method": m.tolist()}
    wins = sum(1 for d in domains if data[d]["method_mean"] < data[d]["baseline_mean"])
    rows.append("")
    rows.append(f"{method} has lower perplexity on {wins}/{len(domains)} domains "
                f"({n} seed{'s' if n > 1 else ''}, validation split).")
    return "\n".join(rows), data


def _write_outputs(recipe: Recipe, out: pathlib.Path, domains, per_seed, baseline) -> dict:
    n_rounds = len(per_seed[0]["rounds"])
    rounds = []
    for r in range(n_rounds):
        rec = {"round": r + 1}
        for kind in ("final", "average"):
            w = np.array([[s["rounds"][r][f"weights_{kind}"][d] for d in domains]
                          for s in per_seed])
            mean, std = _mean_std(w)
            rec[kind] = dict(zip(domains, mean.tolist()))
            rec[f"{kind}_std"] = dict(zip(domains, std.tolist()))
            rec[f"{kind}_per_seed"] = [dict(zip(domains, row.tolist())) for row in w]
        rounds.append(rec)
    weights = {"method": recipe.name, "domains": list(domains), "seeds": len(per_seed),
               "final": rounds[-1]["final"], "average": rounds[-1]["average"],
               "rounds": rounds,
               "note": "train the final model with 'average' (DoReMi's output mixture)"}
    atomic.write_text(out / "weights.json", json.dumps(weights, indent=2) + "\n")
    table, data = perplexity_table(domains, [s["base"]["eval"] for s in per_seed],
                                   [s["baseline"]["eval"] for s in per_seed],
                                   recipe.name, baseline)
    atomic.write_text(out / "perplexity.md", table + "\n")
    atomic.write_text(out / "perplexity.json", json.dumps(data, indent=2, default=float) + "\n")
    plot_weight_trajectory(out / "weights.png", domains,
                           [pathlib.Path(s["rounds"][-1]["run_dir"]) for s in per_seed],
                           recipe.name)
    return {"table": table, "weights": weights, "perplexity": data}


def read_weight_history(run_dir: pathlib.Path, domains) -> tuple[np.ndarray, np.ndarray]:
    """(steps, weights[T, K]) from a run's weights.jsonl."""
    from mixjax.train import metrics as metrics_lib
    rows = metrics_lib.read_jsonl(run_dir / "weights.jsonl")
    steps = np.array([r["step"] for r in rows])
    w = np.array([[r["weights"][d] for d in domains] for r in rows])
    return steps, w


def plot_weight_trajectory(path: pathlib.Path, domains, run_dirs, title: str) -> None:
    """One line per domain (a line style per seed) of the proxy's weights over steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20")
    styles = ["-", "--", ":", "-."]
    for i, run_dir in enumerate(run_dirs):
        steps, w = read_weight_history(run_dir, domains)
        # weights.jsonl logs changes only: extend each value to the next change.
        for k, d in enumerate(domains):
            ax.step(steps, w[:, k], where="post", color=colors(k % colors.N),
                    linestyle=styles[i % len(styles)], label=d if i == 0 else None)
    ax.axhline(1.0 / len(domains), color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("proxy step")
    ax.set_ylabel("domain weight")
    ax.set_title(f"{title}: proxy weights ({len(run_dirs)} seed{'s' if len(run_dirs) > 1 else ''}"
                 ", grey: uniform)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
