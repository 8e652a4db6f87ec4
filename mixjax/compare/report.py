"""The comparison table (results.md / results.csv) and its plots.

Rows are methods (config names), columns the domains and the average over
domains; each cell is the mean ± standard error over seeds of the final
perplexity (validation and test). Against the baseline each method gets the
paired difference per domain with a 95% paired t-interval
(:mod:`mixjax.compare.stats`) and "beats the baseline on X of Y domains" (X:
domains whose interval lies wholly below 0). Weights: final and time-averaged
(over the steps of the run), mean over seeds.
"""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Sequence

import numpy as np

from mixjax.compare import stats
from mixjax.compare.runs import CompareError, RunRecord

SPLITS = ("validation", "test")


def group(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """``{method: runs sorted by seed}`` in first-seen order."""
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.method, []).append(r)
    for m, rs in out.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise CompareError(f"method {m!r}: several runs with the same seed: "
                               + ", ".join(str(r.run_dir) for r in rs))
        rs.sort(key=lambda r: r.seed)
    return out


def choose_baseline(groups: dict[str, list[RunRecord]], name: str | None) -> str:
    """``name`` if given (must be a method), else the stratified-uniform method, else a uniform one."""
    if name is not None:
        if name not in groups:
            raise CompareError(f"unknown baseline {name!r}; methods in this comparison: {', '.join(groups)}")
        return name
    uniform = [m for m, rs in groups.items() if rs[0].cfg.mixing.name == "uniform"
               and not rs[0].cfg.mixing.sample_reweight and rs[0].cfg.train.objective == "mixer"]
    strat = [m for m in uniform if groups[m][0].cfg.data.sampler == "stratified"]
    if strat or uniform:
        return (strat or uniform)[0]
    raise CompareError("no baseline: none of the methods is the uniform mixture; pass --baseline NAME "
                       f"(methods: {', '.join(groups)})")


def _ppl(r: RunRecord, split: str, d: str | None) -> float:
    ev = r.val if split == "validation" else r.test
    if ev is None:
        return math.nan
    return float(ev["ppl_avg"] if d is None else ev[f"ppl/{d}"])


def summarise(records: Sequence[RunRecord], baseline: str | None = None) -> dict:
    groups = group(records)
    base = choose_baseline(groups, baseline)
    domains = records[0].domains
    cols = list(domains) + [None]            # None: the average over domains
    summary = {"baseline": base, "domains": list(domains), "methods": {}}
    base_seeds = {r.seed: r for r in groups[base]}
    for m, rs in groups.items():
        entry = {"seeds": [r.seed for r in rs], "tokens": rs[0].tokens, "cells": {}, "diff": {}, "beats": {}}
        for split in SPLITS:
            if split == "test" and any(r.test is None for r in rs):
                continue
            for d in cols:
                entry["cells"][(split, d)] = stats.mean_se([_ppl(r, split, d) for r in rs])
            if m != base:
                common = [s for s in entry["seeds"] if s in base_seeds]
                mine = {r.seed: r for r in rs}
                for d in cols:
                    entry["diff"][(split, d)] = stats.paired_interval(
                        [_ppl(mine[s], split, d) for s in common], [_ppl(base_seeds[s], split, d) for s in common])
                ivs = [entry["diff"][(split, d)] for d in domains]
                entry["beats"][split] = (sum(iv.below_zero for iv in ivs), sum(iv.above_zero for iv in ivs),
                                         sum(iv.mean < 0 for iv in ivs), len(ivs))
        w_final = np.mean([r.weights[-1] for r in rs], axis=0)
        w_avg = np.mean([stats.time_averaged(r.weight_steps, r.weights, r.cfg.train.steps) for r in rs], axis=0)
        entry["w_final"], entry["w_avg"] = w_final, w_avg
        summary["methods"][m] = entry
    return summary


def _name(d: str | None) -> str:
    return "average" if d is None else d


def write_tables(summary: dict, out: pathlib.Path, header: str = "") -> tuple[pathlib.Path, pathlib.Path]:
    domains, base = summary["domains"], summary["baseline"]
    cols = list(domains) + [None]
    lines = ["# mixjax compare", ""]
    if header:
        lines += [header, ""]
    lines += [f"Baseline: **{base}**. Perplexity: mean ± standard error over seeds (lower is better). "
              "Differences: method − baseline, paired by seed, with a 95% paired t-interval; "
              "\"beats\" counts domains whose interval lies wholly below 0.", ""]
    for split in SPLITS:
        if not any((split, None) in e["cells"] for e in summary["methods"].values()):
            continue
        lines += [f"## Final {split} perplexity", "",
                  "| method | seeds | " + " | ".join(_name(d) for d in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for m, e in summary["methods"].items():
            if (split, None) in e["cells"]:
                lines.append(f"| {m} | {len(e['seeds'])} | " + " | ".join(e["cells"][(split, d)].fmt() for d in cols) + " |")
        lines += ["", f"## Paired difference vs {base} ({split})", "",
                  "| method | beats baseline | worse | lower mean | " + " | ".join(_name(d) for d in cols) + " |",
                  "|---|---|---|---|" + "---|" * len(cols)]
        for m, e in summary["methods"].items():
            if m == base or split not in e["beats"]:
                continue
            b, w, lower, n = e["beats"][split]
            lines.append(f"| {m} | {b} of {n} domains | {w} of {n} | {lower} of {n} | "
                         + " | ".join(e["diff"][(split, d)].fmt() for d in cols) + " |")
        lines.append("")
    lines += ["## Domain weights (mean over seeds): final / time-averaged", "",
              "| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for m, e in summary["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(e["w_final"], e["w_avg"])) + " |")
    md = out / "results.md"
    md.write_text("\n".join(lines) + "\n")
    path = out / "results.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "split", "domain", "seeds", "ppl_mean", "ppl_se", "diff_mean", "diff_low",
                    "diff_high", "weight_final", "weight_time_avg"])
        for m, e in summary["methods"].items():
            for split in SPLITS:
                for j, d in enumerate(cols):
                    if (split, d) not in e["cells"]:
                        continue
                    c = e["cells"][(split, d)]
                    iv = e["diff"].get((split, d))
                    w.writerow([m, split, _name(d), len(e["seeds"]), c.mean, c.se,
                                "" if iv is None else iv.mean, "" if iv is None else iv.low,
                                "" if iv is None else iv.high,
                                e["w_final"][j] if d is not None else "", e["w_avg"][j] if d is not None else ""])
    return md, path


def write_plots(summary: dict, records: Sequence[RunRecord], out: pathlib.Path) -> list[pathlib.Path]:
    """ppl_<split>.png (per-domain perplexity with SE bars), weights.png, loss.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = group(records)
    domains = summary["domains"]
    methods = list(summary["methods"])
    paths = []
    x = np.arange(len(domains) + 1)
    width = 0.8 / max(len(methods), 1)
    for split in SPLITS:
        if not all((split, None) in summary["methods"][m]["cells"] for m in methods):
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(x)), 4))
        for i, m in enumerate(methods):
            cells = [summary["methods"][m]["cells"][(split, d)] for d in list(domains) + [None]]
            ax.bar(x + i * width, [c.mean for c in cells], width,
                   yerr=[0 if not math.isfinite(c.se) else c.se for c in cells], capsize=2, label=m)
        ax.set_xticks(x + width * (len(methods) - 1) / 2, list(domains) + ["average"], rotation=30, ha="right")
        ax.set_ylabel(f"final {split} perplexity (± SE)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"ppl_{split}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    ncol = min(5, len(methods))
    nrow = -(-len(methods) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False, sharey=True)
    for k in range(len(methods), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    for k, m in enumerate(methods):
        ax = axes[k // ncol][k % ncol]
        rs = groups[m]
        total = rs[0].cfg.train.steps
        grid = np.arange(total + 1)
        curves = []
        for r in rs:    # piecewise-constant weights on every step
            idx = np.searchsorted(np.asarray(r.weight_steps), grid, side="right") - 1
            curves.append(r.weights[np.clip(idx, 0, None)])
        mean = np.mean(curves, axis=0)
        for k, d in enumerate(domains):
            ax.plot(grid, mean[:, k], label=d)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("domain weight (mean over seeds)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    p = out / "weights.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        rs = groups[m]
        n = min(len(r.losses["step"]) for r in rs)
        if n == 0:
            continue
        steps = rs[0].losses["step"][:n]
        y = np.nanmean([r.losses["loss"][:n] for r in rs], axis=0)   # absent domains never enter
        ax.plot(steps, y, label=m)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "loss.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    # per-domain training loss: a step where the domain was absent from the batch is NaN in
    # metrics.jsonl; nanmean over seeds skips it and the line has a gap where no seed saw it
    ncol = min(4, len(domains))
    nrow = -(-len(domains) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False, sharex=True)
    for k, d in enumerate(domains):
        ax = axes[k // ncol][k % ncol]
        for m in methods:
            rs = groups[m]
            n = min(len(r.losses["step"]) for r in rs)
            if n == 0:
                continue
            with np.errstate(all="ignore"):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns stay NaN
                    y = np.nanmean([r.losses[f"loss/{d}"][:n] for r in rs], axis=0)
            ax.plot(rs[0].losses["step"][:n], y, label=m, lw=0.8)
        ax.set_title(d, fontsize=9)
    for k in range(len(domains), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    p = out / "loss_domains.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
