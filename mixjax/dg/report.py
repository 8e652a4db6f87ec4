"""Results tables in DomainBed's format (``domainbed/scripts/collect_results.py``).

For each selection method, dataset and algorithm: one column per test env with
``mean +/- s.e.`` over trials in percent (DomainBed's ``format_mean``:
``100 * mean`` and ``100 * std(accs / sqrt(n))``, i.e. the standard error), and
``Avg`` = mean of the per-env means ("X" if any env has no result). Written as
markdown (``results.md``) and CSV (``results.csv``, one row per
method/dataset/algorithm/env with mean, s.e., n and the per-trial values).
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from collections import defaultdict

import numpy as np

from mixjax.dg import selection


def load_records(run_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(run_dir) / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `mixjax dg sweep CONFIG` first")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    return records


def format_mean(data) -> tuple[float | None, float | None, str]:
    """DomainBed ``format_mean``: format_mean([.1, .2, .3]) -> (20.0, 4.71, '20.0 +/- 4.7')."""
    if len(data) == 0:
        return None, None, "X"
    data = np.asarray(data, np.float64)
    mean = 100 * np.mean(data)
    err = 100 * np.std(data / np.sqrt(len(data)))
    return float(mean), float(err), f"{mean:.1f} +/- {err:.1f}"


def collect(records: list[dict], env_names: dict[str, list[str]] | None = None) -> list[dict]:
    """Rows {method, dataset, algorithm, env, test_env, trial_accs, mean, se, text}."""
    grouped = selection.group_records(records)
    datasets = sorted({r["args"]["dataset"] for r in records})
    algorithms = list(dict.fromkeys(r["args"]["algorithm"] for r in records))
    rows = []
    for method in selection.METHODS:
        for ds in datasets:
            n_envs = max(selection.num_envs(r) for r in records if r["args"]["dataset"] == ds)
            names = (env_names or {}).get(ds) or [f"env{i}" for i in range(n_envs)]
            for alg in algorithms:
                for te in range(n_envs):
                    accs = []
                    for (trial, d, a, t), recs in sorted(grouped.items()):
                        if (d, a, t) == (ds, alg, te):
                            best = selection.sweep_acc(recs, method)
                            if best is not None:
                                accs.append(best["test_acc"])
                    mean, se, text = format_mean(accs)
                    rows.append({"method": method, "dataset": ds, "algorithm": alg, "env": names[te], "test_env": te,
                                 "trial_accs": accs, "mean": mean, "se": se, "text": text})
    return rows


def markdown(rows: list[dict]) -> str:
    out = []
    by_table: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_table[(r["method"], r["dataset"])].append(r)
    for (method, ds), trs in by_table.items():
        envs = list(dict.fromkeys(r["env"] for r in trs))
        out.append(f"### {ds}, model selection: {selection.METHODS[method][0]}\n")
        out.append("| Algorithm | " + " | ".join(envs) + " | Avg |")
        out.append("|---" * (len(envs) + 2) + "|")
        for alg in dict.fromkeys(r["algorithm"] for r in trs):
            cells = [r for r in trs if r["algorithm"] == alg]
            means = [r["mean"] for r in cells]
            avg = "X" if any(m is None for m in means) else f"{sum(means) / len(means):.1f}"
            out.append(f"| {alg} | " + " | ".join(r["text"] for r in cells) + f" | {avg} |")
        out.append("")
    return "\n".join(out)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "dataset", "algorithm", "env", "test_env", "mean", "se", "n_trials", "trial_accs"])
    for r in rows:
        w.writerow([r["method"], r["dataset"], r["algorithm"], r["env"], r["test_env"],
                    "" if r["mean"] is None else f"{r['mean']:.2f}", "" if r["se"] is None else f"{r['se']:.2f}",
                    len(r["trial_accs"]), " ".join(f"{a:.4f}" for a in r["trial_accs"])])
    return buf.getvalue()


def write_tables(run_dir: str | pathlib.Path, env_names: dict[str, list[str]] | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    run_dir = pathlib.Path(run_dir)
    rows = collect(load_records(run_dir), env_names)
    md, cs = run_dir / "results.md", run_dir / "results.csv"
    md.write_text(markdown(rows))
    cs.write_text(csv_text(rows))
    return md, cs
