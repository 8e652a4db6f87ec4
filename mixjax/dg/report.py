"""Results tables in DomainBed's format (``domainbed/scripts/collect_results.py``).

For each selection method, dataset and algorithm: one column per test env with
``mean +/- s.e.`` over trials in percent (DomainBed's ``format_mean``:
``100 * mean`` and ``100 * std(accs / sqrt(n))``, i.e. the standard error), and
``Avg`` = mean of the per-env means ("X" if any env has no result). Then
DomainBed's "Averages" table: per algorithm and dataset, each trial's mean over
the test envs it has, reported as ``format_mean`` over trials, and ``Avg`` =
mean over datasets. Written as markdown (``results.md``), CSV (``results.csv``,
one row per method/dataset/algorithm/env with mean, s.e., n and the per-trial
values) and, with ``latex=True``, ``results.tex`` in the booktabs layout of
DomainBed's ``collect_results.py --latex``.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from collections import defaultdict

import numpy as np

from mixjax.dg import selection


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    return records


def load_records(run_dir: str | pathlib.Path) -> list[dict]:
    """Every record of a sweep: ``RUN_DIR/*/results.jsonl`` (DomainBed's layout, as its
    ``reporting.load_records``), or the single ``RUN_DIR/results.jsonl`` of earlier sweeps."""
    run_dir = pathlib.Path(run_dir)
    legacy = run_dir / "results.jsonl"
    paths = sorted(run_dir.glob("*/results.jsonl")) if run_dir.is_dir() else []
    if legacy.exists():
        paths.append(legacy)
    if not paths:
        raise FileNotFoundError(f"{run_dir} has no results.jsonl (neither per job nor at the top); "
                                "run `mixjax dg sweep CONFIG` first")
    return [r for p in paths for r in _read_jsonl(p)]


def format_mean(data, latex: bool = False) -> tuple[float | None, float | None, str]:
    """DomainBed ``format_mean``: format_mean([.1, .2, .3]) -> (20.0, 4.71, '20.0 +/- 4.7')."""
    if len(data) == 0:
        return None, None, "X"
    data = np.asarray(data, np.float64)
    mean = 100 * np.mean(data)
    err = 100 * np.std(data / np.sqrt(len(data)))
    pm = "$\\pm$" if latex else "+/-"
    return float(mean), float(err), f"{mean:.1f} {pm} {err:.1f}"


def collect(records: list[dict], env_names: dict[str, list[str]] | None = None, latex: bool = False) -> list[dict]:
    """Rows {method, dataset, algorithm, env, test_env, trial_accs, mean, se, text}."""
    grouped = selection.group_records(records)
    datasets = sorted({selection.dataset_label(r["args"]) for r in records})
    algorithms = list(dict.fromkeys(r["args"]["algorithm"] for r in records))
    rows = []
    for method in selection.methods_for(records):
        for ds in datasets:
            ds_recs = [r for r in records if selection.dataset_label(r["args"]) == ds]
            n_envs = max(selection.num_envs(r) for r in ds_recs)
            names = (env_names or {}).get(ds_recs[0]["args"]["dataset"]) or [f"env{i}" for i in range(n_envs)]
            for alg in algorithms:
                for te in range(n_envs):
                    accs, before, tt_s = [], [], []
                    open_set: dict[str, list[float]] = {}
                    for (trial, d, a, t), recs in sorted(grouped.items()):
                        if (d, a, t) == (ds, alg, te):
                            best = selection.sweep_acc(recs, method)
                            if best is not None:
                                accs.append(best["test_acc"])
                                if got := _open_set_values(recs, best, te):
                                    for k, v in {**got, "trials": trial}.items():
                                        open_set.setdefault(k, []).append(v)
                                if "test_acc_before" in best:
                                    before.append(best["test_acc_before"])
                                    tt_s.append(best["test_time_s"])
                    mean, se, text = format_mean(accs, latex)
                    rows.append({"method": method, "dataset": ds, "algorithm": alg, "env": names[te], "test_env": te,
                                 "trial_accs": accs, "mean": mean, "se": se, "text": text,
                                 # the selected checkpoints without their test-time step
                                 "trial_accs_before": before, "test_time_s": tt_s,
                                 # open-set sweeps: the selected checkpoints' closed_acc, auroc, oscr
                                 # and their trial seeds
                                 "trial_open_set": open_set})
    return rows


def _open_set_values(recs: list[dict], best: dict, test_env: int) -> dict[str, float]:
    """The open-set metrics (``mixjax.dg.openset``) of the selected checkpoint: the record of the
    chosen hparams seed's single-test-env run at the chosen step; {} for closed-set records."""
    from mixjax.dg.openset import METRICS, MSP_METRICS, record_key

    for r in recs:
        if (r["args"]["hparams_seed"] == best["hparams_seed"] and r["step"] == best["step"]
                and list(r["args"]["test_envs"]) == [test_env]):
            return {m: r[record_key(test_env, m)] for m in METRICS + MSP_METRICS if record_key(test_env, m) in r}
    return {}


def open_set_markdown(rows: list[dict]) -> str:
    """Open-set sweeps: per selection method, dataset, algorithm and test env, the selected
    checkpoints' closed-set accuracy (known classes), AUROC (known vs unknown) and OSCR, each
    ``format_mean`` over trials; per algorithm "Avg": each trial's mean over the test envs it
    has, ``format_mean`` over trials (DomainBed's Averages rule). Where an algorithm with its own
    score was tabulated, two more columns give AUROC and OSCR of its max softmax probability
    ("-" for the others, whose score is that already)."""
    from mixjax.dg.openset import METRICS, MSP_METRICS

    os_rows = [r for r in rows if r.get("trial_open_set")]
    if not os_rows:
        return ""
    metrics = METRICS + (MSP_METRICS if any(m in r["trial_open_set"] for r in os_rows for m in MSP_METRICS) else ())
    heads = ["closed acc", "AUROC", "OSCR", "AUROC (max softmax)", "OSCR (max softmax)"][: len(metrics)]
    out = ["", "### Open set: the selected checkpoints' test env (closed-set acc on the known classes; "
           "AUROC and OSCR of known vs unknown)\n",
           "| selection | dataset | algorithm | test env | " + " | ".join(heads) + " |",
           "|---" * (4 + len(heads)) + "|"]
    by_alg: dict[tuple, list[dict]] = defaultdict(list)
    for r in os_rows:
        by_alg[(r["method"], r["dataset"], r["algorithm"])].append(r)
    for (method, ds, alg), rs in by_alg.items():
        for r in rs:
            cells = [format_mean(r["trial_open_set"][m])[2] if m in r["trial_open_set"] else "-" for m in metrics]
            out.append(f"| {method} | {ds} | {alg} | {r['env']} | " + " | ".join(cells) + " |")
        cells = []
        for m in metrics:
            per_trial: dict[int, list[float]] = defaultdict(list)
            for r in rs:
                for t, v in zip(r["trial_open_set"]["trials"], r["trial_open_set"].get(m, [])):
                    per_trial[t].append(v)
            cells.append(format_mean([float(np.mean(v)) for _, v in sorted(per_trial.items())])[2]
                         if per_trial else "-")
        out.append(f"| {method} | {ds} | {alg} | Avg | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def averages(records: list[dict], latex: bool = False) -> list[dict]:
    """DomainBed's "Averages" rows {method, algorithm, dataset, trial_accs, mean, se, text}."""
    grouped = selection.group_records(records)
    datasets = sorted({selection.dataset_label(r["args"]) for r in records})
    algorithms = list(dict.fromkeys(r["args"]["algorithm"] for r in records))
    rows = []
    for method in selection.methods_for(records):
        accs: dict[tuple, list[float]] = defaultdict(list)  # (alg, dataset, trial) -> sweep accs over test envs
        for (trial, d, a, _te), recs in sorted(grouped.items()):
            best = selection.sweep_acc(recs, method)
            if best is not None:
                accs[(a, d, trial)].append(best["test_acc"])
        for alg in algorithms:
            for ds in datasets:
                trial_avgs = [float(np.mean(v)) for (a, d, _t), v in sorted(accs.items()) if (a, d) == (alg, ds)]
                mean, se, text = format_mean(trial_avgs, latex)
                rows.append({"method": method, "algorithm": alg, "dataset": ds, "trial_accs": trial_avgs,
                             "mean": mean, "se": se, "text": text})
    return rows


def _tables(rows: list[dict], avg_rows: list[dict]):
    """(method, title, column labels, [(algorithm, cells, avg)]) per table, DomainBed's order."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        for ds in dict.fromkeys(r["dataset"] for r in rows if r["method"] == method):
            trs = [r for r in rows if (r["method"], r["dataset"]) == (method, ds)]
            yield method, ds, list(dict.fromkeys(r["env"] for r in trs)), _body(trs)
        trs = [r for r in avg_rows if r["method"] == method]
        yield method, "Averages", list(dict.fromkeys(r["dataset"] for r in trs)), _body(trs)


def _body(trs: list[dict]) -> list[tuple[str, list[str], str]]:
    body = []
    for alg in dict.fromkeys(r["algorithm"] for r in trs):
        cells = [r for r in trs if r["algorithm"] == alg]
        means = [r["mean"] for r in cells]
        avg = "X" if any(m is None for m in means) else f"{sum(means) / len(means):.1f}"
        body.append((alg, [r["text"] for r in cells], avg))
    return body


def markdown(rows: list[dict], avg_rows: list[dict] | None = None) -> str:
    out = []
    for method, title, cols, body in _tables(rows, avg_rows or []):
        if title == "Averages" and not body:
            continue
        out.append(f"### {title}, model selection: {selection.METHODS[method][0]}\n")
        out.append("| Algorithm | " + " | ".join(cols) + " | Avg |")
        out.append("|---" * (len(cols) + 2) + "|")
        for alg, cells, avg in body:
            out.append(f"| {alg} | " + " | ".join(cells) + f" | {avg} |")
        out.append("")
    return "\n".join(out)


def test_time_markdown(rows: list[dict]) -> str:
    """For algorithms with a test-time procedure: the selected checkpoints' test-env accuracy
    without (plain ``predict``) and with their test-time step, ``format_mean`` over trials, and
    the mean wall seconds of their test-time evaluation (all envs of a job)."""
    tt = [r for r in rows if r.get("trial_accs_before")]
    if not tt:
        return ""
    out = ["", "### Test-time step: test-env accuracy before -> after (same selected checkpoints)\n",
           "| selection | dataset | algorithm | test env | before | after | test-time s / job |",
           "|---|---|---|---|---|---|---|"]
    for r in tt:
        out.append(f"| {r['method']} | {r['dataset']} | {r['algorithm']} | {r['env']} | "
                   f"{format_mean(r['trial_accs_before'])[2]} | {r['text']} | "
                   f"{float(np.mean(r['test_time_s'])):.3f} |")
    return "\n".join(out) + "\n"


def _tex_escape(text: str) -> str:
    return "".join("\\" + c if c in "%&_#$" else c for c in str(text))


def latex(rows: list[dict], avg_rows: list[dict]) -> str:
    """A standalone document with DomainBed's ``collect_results.py --latex`` tables (booktabs)."""
    out = ["\\documentclass{article}", "\\usepackage{booktabs}", "\\usepackage{adjustbox}",
           "\\begin{document}", "\\section{Full DomainBed results}"]
    current = None
    for method, title, cols, body in _tables(rows, avg_rows):
        if method != current:
            out += ["", f"\\subsection{{Model selection: {selection.METHODS[method][0]}}}"]
            current = method
        out += ["", f"\\subsubsection{{{_tex_escape(title)}}}", "", "\\begin{center}",
                "\\adjustbox{max width=\\textwidth}{%", "\\begin{tabular}{l" + "c" * (len(cols) + 1) + "}",
                "\\toprule",
                " & ".join("\\textbf{" + _tex_escape(c) + "}" for c in ["Algorithm", *cols, "Avg"]) + " \\\\",
                "\\midrule"]
        for alg, cells, avg in body:
            out.append(" & ".join([_tex_escape(alg), *cells, avg]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}", "\\end{center}"]
    out.append("\\end{document}")
    return "\n".join(out) + "\n"


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "dataset", "algorithm", "env", "test_env", "mean", "se", "n_trials", "trial_accs"])
    for r in rows:
        w.writerow([r["method"], r["dataset"], r["algorithm"], r["env"], r["test_env"],
                    "" if r["mean"] is None else f"{r['mean']:.2f}", "" if r["se"] is None else f"{r['se']:.2f}",
                    len(r["trial_accs"]), " ".join(f"{a:.4f}" for a in r["trial_accs"])])
    return buf.getvalue()


def load_many(run_dirs) -> list[dict]:
    """The records of several sweeps for one set of tables (e.g. one run with label noise, one
    without: their dataset rows differ). ``ValueError`` when two directories hold records of the
    same job identity (dataset row, algorithm, test envs, hparams seed, trial): their results
    would be mixed into one cell."""
    owner: dict[tuple, pathlib.Path] = {}
    out = []
    for d in dict.fromkeys(pathlib.Path(p).resolve() for p in run_dirs):
        recs = load_records(d)
        for r in recs:
            a = r["args"]
            key = (selection.dataset_label(a), a["algorithm"], tuple(a["test_envs"]), a["hparams_seed"], a["trial_seed"])
            if owner.setdefault(key, d) != d:
                raise ValueError(f"{owner[key]} and {d} both hold results of {key[0]} / {key[1]} (test envs "
                                 f"{list(key[2])}, hparams seed {key[3]}, trial {key[4]}); one table cannot "
                                 "mix them - give sweeps of different datasets, protocols or algorithms")
        out += recs
    return out


def write_tables(run_dir: str | pathlib.Path, env_names: dict[str, list[str]] | None = None,
                 latex_table: bool = False, more=(), out: str | pathlib.Path | None = None) -> tuple[pathlib.Path, ...]:
    """results.md and results.csv (and results.tex with ``latex_table``) of ``run_dir`` and the
    sweeps in ``more`` (:func:`load_many`), written to ``out`` (default ``run_dir``); returns
    their paths."""
    run_dir = pathlib.Path(run_dir)
    records = load_many([run_dir, *more]) if more else load_records(run_dir)
    rows = collect(records, env_names)
    avg_rows = averages(records)
    run_dir = pathlib.Path(out) if out is not None else run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    md, cs = run_dir / "results.md", run_dir / "results.csv"
    md.write_text(markdown(rows, avg_rows) + test_time_markdown(rows) + open_set_markdown(rows))
    cs.write_text(csv_text(rows))
    if not latex_table:
        return md, cs
    tex = run_dir / "results.tex"
    tex.write_text(latex(collect(records, env_names, latex=True), averages(records, latex=True)))
    return md, cs, tex
