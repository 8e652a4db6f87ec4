"""A search's report: results.md (the found mixture, the fit's held-out quality, the target
models' per-domain perplexity) and fit.png (predicted vs actual, out of fold)."""

from __future__ import annotations

import pathlib

import numpy as np


def results_markdown(summary: dict, settings: dict) -> str:
    domains, fit = summary["domains"], summary["fit"]
    lines = [f"# mixjax search {summary['method']}", ""]
    lines.append(f"Target: {settings['target']}; {fit['proxies_used']} proxies used; "
                 f"swarm {summary['swarm_seconds']:.0f} s; whole search "
                 f"{summary['seconds']:.0f} s (this invocation).")
    lines.append("")
    if summary["method"] == "regmix":
        lines.append("| regressor | held-out Spearman | held-out MAE |")
        lines.append("|---|---|---|")
        for kind, cv in fit["cv"].items():
            mark = " (used)" if kind == fit["regressor"] else ""
            lines.append(f"| {kind}{mark} | {cv['spearman']:.3f} | {cv['mae']:.4f} |")
    elif "extrapolation" in fit:
        ex = fit["extrapolation"]
        lines.append(f"Scaling law ({fit['regressor']}), fitted on proxy sizes N = "
                     f"{', '.join(f'{x:.0f}' for x in ex['fit_N'])} ({ex['runs_fitted']} runs), "
                     f"extrapolated to the held-out largest N = {ex['held_out_N']:.0f}: MAE "
                     f"{ex['mae']:.4f}, mean relative error {100 * ex['rel_err_mean']:.2f}%, "
                     f"Spearman {ex['spearman']:.3f} (final D); MAE over all its D "
                     f"{ex['mae_all_D']:.4f}. Law on all sizes: train residual RMS "
                     f"{fit['residual_rms']:.4g}, converged: {fit['converged']}; minimised at "
                     f"the target's N = {fit['target_N']:.0f}, D = {fit['target_D']:.0f}.")
    else:
        lines.append(f"Mixing law fit: held-out Spearman {fit['cv']['spearman']:.3f}, "
                     f"MAE {fit['cv']['mae']:.4f}; train residual RMS "
                     f"{fit['residual_rms']:.4g}; converged: {fit['converged']}")
    lines.append("")
    if fit.get("warning"):
        lines += [f"**Warning:** {fit['warning']}", ""]
    pred = f"{fit['predicted']:.4f}"
    if "bootstrap" in fit:
        lo, hi = fit["bootstrap"]["pred_found_interval90"]
        pred += f" (bootstrap 90%: {lo:.4f} .. {hi:.4f})"
    lines.append(f"Predicted target loss of the found mixture: {pred}")
    lines.append("")
    std = fit.get("bootstrap", {}).get("weights_std")
    lines.append("| domain | found weight |" + (" bootstrap std |" if std else ""))
    lines.append("|---|---|" + ("---|" if std else ""))
    for i, d in enumerate(domains):
        lines.append(f"| {d} | {summary['weights'][d]:.4f} |"
                     + (f" {std[i]:.4f} |" if std else ""))
    evals = summary["evals"]
    if evals:
        names = list(evals)
        n = len(evals[names[0]])
        lines += ["", f"Target model validation perplexity ({n} seed{'s' if n > 1 else ''}, "
                  "mean ± std):", ""]
        lines.append("| domain | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        keys = [(d, f"ppl/{d}") for d in domains] + [("uniform avg", "ppl_avg"),
                                                      ("worst", "ppl_worst")]
        for label, key in keys:
            cells = []
            for nm in names:
                v = np.array([e[key] for e in evals[nm]])
                cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if n > 1 else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fit(path: pathlib.Path, y: np.ndarray, fit: dict, method: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cv = fit["cv"][fit["regressor"]] if method == "regmix" else fit["cv"]
    pred = np.asarray(cv["pred"])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=14)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
    ax.set_xlabel("actual target loss (proxy)")
    ax.set_ylabel("predicted (out of fold)")
    ax.set_title(f"{method}: Spearman {cv['spearman']:.2f}, MAE {cv['mae']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


