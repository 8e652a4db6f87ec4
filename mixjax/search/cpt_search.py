"""``mixjax search dcpt`` and ``mixjax search sft``: mixture laws for continual
pre-training and fine-tuning, fitted on proxy swarms that start from a pre-trained run.

    mixjax search dcpt CONFIG --init-from RUN[,RUN2,...] [--out DIR] [--set K=V ...]
                              [--proxy-set K=V ...] [--search-set K=V ...]
    mixjax search sft  CONFIG [--init-from RUN] [--out DIR] ...

dcpt (the D-CPT law, :mod:`mixjax.search.dcpt_law`): search settings ``general`` and
``domain`` name two training domains of the config; the swarm trains one proxy per
domain ratio r in ``ratios`` (weight 1 - r on the general corpus, r on the domain
corpus, 0 elsewhere) x ``seeds_per_mixture`` seeds, each continuing the pre-trained
parameters of an ``--init-from`` run (``model.init_from``; the proxy takes that run's
model shape). Several runs (comma-separated, of different sizes) give the law's N axis;
the proxies' evaluations every ``train.eval_every`` steps give its D axis (tokens seen).
The general loss is fitted in r_g = 1 - r, the domain loss in r. Held-out check: the
laws are refitted without every proxy's final evaluation and predict it. The usages
are evaluated at the target config's (N, D): the ratio minimising the domain loss
with the general loss within (1 + ``tau``) of general-only continuation (written to
weights.json), the smallest ratio reaching ``target_domain_loss`` (if set), and the
trade-off curve (dcpt.png, fit.json).

sft (the effective-data law, :mod:`mixjax.search.sft_law`): the config's training
domains are the fine-tuning domains (mixpile's domains used as SFT domains: no
instruction-formatted corpus ships with mixjax); the swarm continues the pre-trained
run (``--init-from`` or the config's ``model.init_from``) on the uniform mixture, on
each domain halved and doubled (the paper's one-domain perturbations), and on
``proxies`` mixtures of the search ``design``. A proxy's evaluation after s steps is
one run with x_j = h_j s B S tokens of domain j (an approximation: the paper trains
each data amount to completion). The law is fitted on all evaluations but each proxy's
final one, checked on those, refitted on all, and minimised at the target's token
budget for the search ``target``.

Bad input (no pre-trained run, a ratio outside [0, 1], an unknown domain, too few
evaluations for the law) is one line and exit status 2 before anything trains.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

from mixjax.search.phases import target_size, train_swarms
from mixjax.search.settings import SearchError, claim_out, load_search_config, write_json


# ------------------------------------------------------------------------ checks
def init_runs(arg: str | None, target_cfg) -> list[str]:
    runs = [r for r in (arg or "").split(",") if r] or \
        ([target_cfg.model.init_from] if target_cfg.model.init_from else [])
    if not runs:
        raise SearchError("no pre-trained run to continue: pass --init-from RUN (a mixjax run "
                          "dir, a safetensors file or an HF Llama dir) or set model.init_from")
    for r in runs:
        if not pathlib.Path(r).exists():
            raise SearchError(f"--init-from: no such run {r!r}")
    return runs


def check_dcpt_settings(s: dict) -> np.ndarray:
    ratios = s["ratios"]
    if not isinstance(ratios, (list, tuple)) or not ratios:
        raise SearchError(f"search setting 'ratios': a list of domain ratios, got {ratios!r}")
    bad = [r for r in ratios if not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0]
    if bad:
        raise SearchError(f"search setting 'ratios': every domain ratio must lie in [0, 1], "
                          f"got {bad}")
    if len(set(ratios)) < 3:
        raise SearchError(f"search setting 'ratios': the law's ratio terms need >= 3 distinct "
                          f"ratios, got {sorted(set(ratios))}")
    if s["general"] is None or s["domain"] is None or s["general"] == s["domain"]:
        raise SearchError("search settings 'general' and 'domain' must name two different "
                          f"training domains, got {s['general']!r} and {s['domain']!r}")
    if not s["tau"] >= 0:
        raise SearchError(f"search setting 'tau' must be >= 0, got {s['tau']!r}")
    _check_seeds(s)
    return np.asarray(ratios, np.float64)


def _check_seeds(s: dict) -> None:
    if not isinstance(s["seeds_per_mixture"], int) or s["seeds_per_mixture"] < 1:
        raise SearchError("search setting 'seeds_per_mixture' must be a positive integer, got "
                          f"{s['seeds_per_mixture']!r}")


def _evals_needed(proxy_cfg, need: int, what: str) -> None:
    every, steps = proxy_cfg.train.eval_every, proxy_cfg.train.steps
    if not every or steps // every < need:
        raise SearchError(f"{what} needs >= {need} evaluations per proxy (its D axis): the "
                          f"proxy config has train.steps={steps}, train.eval_every={every}")


def _proxy_for_run(proxy_cfg, run: str):
    """The proxy config continuing ``run``: that run's model shape with model.init_from."""
    from mixjax import config as config_lib
    cfg = config_lib.from_dict(config_lib.to_dict(proxy_cfg))
    if (pathlib.Path(run) / "config.json").exists():
        cfg.model = dataclasses.replace(config_lib.load_run_config(run).model)
    cfg.model.init_from = str(run)
    config_lib.validate(cfg)
    return cfg


def _rows(res, tokens_per_step: int):
    """[(step, tokens, table float[P, K'], ok bool[P])] over every evaluation."""
    out = []
    for step, table in list(res.history) + [(res.steps, res.losses)]:
        table = np.asarray(table, np.float64)
        ok = res.alive & np.all(np.isfinite(table), axis=1)
        out.append((step, step * tokens_per_step, table, ok))
    return out


# -------------------------------------------------------------------------- dcpt
def run_dcpt(target_cfg, proxy_cfg, settings: dict, runs: list[str], out: pathlib.Path, *,
             log=print) -> dict:
    from mixjax.search import dcpt_law as dl
    from mixjax.search.regmix import FitError
    from mixjax.train.data import build_data
    t0 = time.perf_counter()
    ratios = check_dcpt_settings(settings)
    _evals_needed(proxy_cfg, 2, "the D-CPT law")
    cfgs = {}
    for i, run in enumerate(runs):
        try:
            cfgs[f"run{i}"] = _proxy_for_run(proxy_cfg, run)
        except ValueError as e:
            raise SearchError(f"--init-from {run!r}: {e}") from None
    data = build_data(proxy_cfg)
    domains = tuple(data.domains)
    for key in ("general", "domain"):
        if settings[key] not in domains:
            raise SearchError(f"search setting {key!r}: {settings[key]!r} is not a training "
                              f"domain; domains: {list(domains)}")
    g, d = domains.index(settings["general"]), domains.index(settings["domain"])
    reps = settings["seeds_per_mixture"]
    mix = np.zeros((len(ratios), len(domains)))
    mix[:, g], mix[:, d] = 1.0 - ratios, ratios
    mixtures = np.repeat(mix, reps, axis=0)          # proxy axis = mixtures x seeds
    r_of = np.repeat(ratios, reps)
    from mixjax import run_identity
    claim_out(out, "design.json", {
        "method": "dcpt", "general": settings["general"], "domain": settings["domain"],
        "ratios": ratios, "seeds_per_mixture": reps, "init_from": runs, "mixtures": mixtures,
        "proxies": {n: run_identity.identity_dict(c) for n, c in cfgs.items()}})
    results = train_swarms(cfgs, mixtures, settings, data, out, log)
    tps = proxy_cfg.data.batch_size * proxy_cfg.data.seq_len
    cols = {"n": [], "d": [], "r": [], "lg": [], "ld": [], "last": []}
    for n_params, res in results.values():
        ev = list(res.eval_domains)
        ig, idd = ev.index(settings["general"]), ev.index(settings["domain"])
        rows = _rows(res, tps)
        for j, (_, tokens, table, ok) in enumerate(rows):
            m = int(ok.sum())
            cols["n"] += [n_params] * m
            cols["d"] += [tokens] * m
            cols["r"] += r_of[ok].tolist()
            cols["lg"] += table[ok, ig].tolist()
            cols["ld"] += table[ok, idd].tolist()
            cols["last"] += [j == len(rows) - 1] * m
    c = {k: np.asarray(v, np.float64) for k, v in cols.items()}
    last = c["last"].astype(bool)
    kw = dict(eps=settings["dcpt_eps"], restarts=settings["law_restarts"])
    held = {}
    for name, y, rr in (("general", c["lg"], 1.0 - c["r"]), ("domain", c["ld"], c["r"])):
        law = dl.fit_dcpt(c["n"][~last], c["d"][~last], rr[~last], y[~last], **kw)
        pred = law.predict(c["n"][last], c["d"][last], rr[last])
        held[name] = {"mae": float(np.abs(pred - y[last]).mean()),
                      "rel_err_mean": float(np.mean(np.abs(pred - y[last]) / y[last])),
                      "pred": pred.tolist(), "actual": y[last].tolist()}
    law_g = dl.fit_dcpt(c["n"], c["d"], 1.0 - c["r"], c["lg"], **kw)
    law_d = dl.fit_dcpt(c["n"], c["d"], c["r"], c["ld"], **kw)
    n_t, d_t = target_size(target_cfg, data)
    budget = dl.general_budget(law_g, n_t, d_t, settings["tau"])
    r_best, ld_best = dl.ratio_under_general_budget(law_g, law_d, n_t, d_t, budget)
    usages = {"target_N": n_t, "target_D": d_t, "tau": settings["tau"],
              "general_budget": budget, "ratio_under_budget": r_best,
              "domain_loss_at_ratio": ld_best,
              "general_loss_at_ratio": float(law_g.predict(n_t, d_t, 1.0 - r_best))}
    if settings["target_domain_loss"] is not None:
        try:
            usages["ratio_for_target_domain_loss"] = dl.ratio_for_domain_loss(
                law_d, n_t, d_t, float(settings["target_domain_loss"]))
        except FitError as e:      # unreachable target: reported, not fatal
            usages["ratio_for_target_domain_loss"] = None
            usages["target_domain_loss_note"] = str(e)
    curve = dl.tradeoff_curve(law_g, law_d, n_t, d_t)
    sizes = sorted({int(x) for x in c["n"]})
    fit = {"regressor": "dcpt_law", "general_law": law_g.as_dict(), "domain_law": law_d.as_dict(),
           "held_out_final_eval": held, "sizes_N": sizes, "runs_fitted": int(len(c["n"])),
           "usages": usages, "tradeoff": curve, "weights": _weights(mix, g, d, r_best),
           "predicted": ld_best}
    warn = [f"the {nm} law's fit did not report convergence (train residual RMS "
            f"{lw.residual_rms:.4g}); its parameters may be degenerate, its predictions on "
            "the held-out check are what to trust" for nm, lw in (("general", law_g),
                                                                 ("domain", law_d))
            if not lw.converged]
    if len(sizes) < 2:
        warn.append("one model size: the law's N term is not identified; the usages at "
                    "another N are extrapolations without support")
    if warn:
        fit["warning"] = "; ".join(warn)
    write_json(out / "fit.json", fit)
    wb = {dom: float(w) for dom, w in zip(domains, fit["weights"])}
    write_json(out / "weights.json", {
        "method": "dcpt", "domains": list(domains), "weights_by_domain": wb,
        "ratio": r_best, "predicted_domain_loss": ld_best,
        "predicted_general_loss": usages["general_loss_at_ratio"],
        "general_budget": budget,
        "use": "--set mixing.name=manual --set 'mixing.hparams.weights_by_domain="
               + json.dumps({k: round(v, 6) for k, v in wb.items()}) + "'"})
    _plot_dcpt(out / "dcpt.png", curve, r_best, held, settings)
    log(f"D-CPT law on {len(c['n'])} evaluations over N = {sizes}: held-out final evaluation "
        f"relative error general {100 * held['general']['rel_err_mean']:.2f}%, domain "
        f"{100 * held['domain']['rel_err_mean']:.2f}%")
    log(f"ratio under the general budget (tau {settings['tau']}): r = {r_best:.3f}, predicted "
        f"domain loss {ld_best:.4f}, general loss {usages['general_loss_at_ratio']:.4f}")
    if warn:
        log("warning: " + fit["warning"])
    return {"fit": fit, "weights": wb, "seconds": time.perf_counter() - t0}


def _weights(mix, g, d, r):
    w = np.zeros(mix.shape[1])
    w[g], w[d] = 1.0 - r, r
    return w


def _plot_dcpt(path, curve, r_best, held, settings) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    rs, lg, ld = (np.asarray(curve[k]) for k in ("r", "general", "domain"))
    a.plot(lg, ld, color="C0")
    i = int(np.argmin(np.abs(rs - r_best)))
    a.scatter([lg[i]], [ld[i]], color="C3", zorder=3, label=f"r = {r_best:.3f}")
    for t in range(0, len(rs), max(len(rs) // 5, 1)):
        a.annotate(f"{rs[t]:.1f}", (lg[t], ld[t]), fontsize=7)
    a.set_xlabel(f"general loss ({settings['general']})")
    a.set_ylabel(f"domain loss ({settings['domain']})")
    a.set_title("D-CPT trade-off at the target (N, D)")
    a.legend()
    for name, col in (("general", "C0"), ("domain", "C1")):
        b.scatter(held[name]["actual"], held[name]["pred"], s=12, color=col, label=name)
    allv = np.concatenate([held[k][f] for k in held for f in ("actual", "pred")])
    b.plot([allv.min(), allv.max()], [allv.min(), allv.max()], color="grey", linewidth=0.8)
    b.set_xlabel("actual loss (final evaluation, held out)")
    b.set_ylabel("predicted")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- sft
def sft_design(k: int, settings: dict, domains, prior, cons) -> np.ndarray:
    from mixjax.search import designs
    rows = [np.full(k, 1.0 / k)]
    for j in range(k):                       # one domain halved / doubled, the rest uniform
        for f in (0.5, 2.0):
            h = np.full(k, 1.0)
            h[j] = f
            rows.append(h / h.sum())
    if settings["proxies"] > 0:
        rows += list(designs.make_design(settings["design"], settings["proxies"], domains,
                                         prior=prior, seed=settings["design_seed"],
                                         constraints=cons))
    return np.asarray(rows)


def run_sft(target_cfg, proxy_cfg, settings: dict, runs: list[str], out: pathlib.Path, *,
            log=print) -> dict:
    from mixjax.search import designs, regmix, sft_law
    from mixjax.train.data import build_data
    t0 = time.perf_counter()
    _check_seeds(settings)
    if len(runs) != 1:
        raise SearchError(f"sft continues one pre-trained run, got {len(runs)}: {runs}")
    _evals_needed(proxy_cfg, 2, "the SFT law")
    try:
        cfg = _proxy_for_run(proxy_cfg, runs[0])
    except ValueError as e:
        raise SearchError(f"--init-from {runs[0]!r}: {e}") from None
    data = build_data(proxy_cfg)
    domains = tuple(data.domains)
    k = len(domains)
    pi_eval = regmix.target_weights(tuple(domains), domains, settings["target"])
    counts = np.asarray(data.token_counts, np.float64)
    _, budget = target_size(target_cfg, data)
    cons = designs.make_constraints(domains, min_weight=settings["min_weight"],
                                    max_weight=settings["max_weight"],
                                    max_epochs=settings["max_epochs"], budget_tokens=budget,
                                    token_counts=counts)
    mix = sft_design(k, settings, domains, counts / counts.sum(), cons)
    mixtures = np.repeat(mix, settings["seeds_per_mixture"], axis=0)
    from mixjax import run_identity
    claim_out(out, "design.json", {"method": "sft", "domains": list(domains),
                                   "mixtures": mixtures, "init_from": runs,
                                   "proxy": run_identity.identity_dict(cfg)})
    results = train_swarms({"run0": cfg}, mixtures, settings, data, out, log)
    _, res = results["run0"]
    tps = proxy_cfg.data.batch_size * proxy_cfg.data.seq_len
    ev = list(res.eval_domains)
    cols = [ev.index(x) for x in domains]
    x, y, last = [], [], []
    rows = _rows(res, tps)
    for j, (_, tokens, table, ok) in enumerate(rows):
        x.append(mixtures[ok] * tokens)
        y.append(table[ok][:, cols])
        last += [j == len(rows) - 1] * int(ok.sum())
    x, y, last = np.concatenate(x), np.concatenate(y), np.asarray(last)
    kw = dict(restarts=settings["law_restarts"])
    held_law = sft_law.fit_sft_law(x[~last], y[~last], **kw)
    pred = held_law.predict(x[last])
    law = sft_law.fit_sft_law(x, y, **kw)
    w, val = sft_law.optimal_weights(law, budget, pi_eval, lo=cons.lo, hi=cons.hi)
    held = {"mae": float(np.abs(pred - y[last]).mean()),
            "rel_err_mean": float(np.mean(np.abs(pred - y[last]) / y[last])),
            "pred": (pred @ pi_eval).tolist(), "actual": (y[last] @ pi_eval).tolist()}
    fit = {"regressor": "sft_law", "law": law.as_dict(), "held_out_final_eval": held,
           "weights": w, "predicted": val, "budget_tokens": budget,
           "target": settings["target"], "runs_fitted": int(len(y))}
    if not law.converged:
        fit["warning"] = (f"a domain's SFT law did not report convergence (train residual "
                          f"RMS {max(law.residual_rms):.4g})")
        log("warning: " + fit["warning"])
    write_json(out / "fit.json", fit)
    wb = {dom: float(v) for dom, v in zip(domains, w)}
    write_json(out / "weights.json", {
        "method": "sft", "domains": list(domains), "weights_by_domain": wb,
        "predicted_target_loss": val, "target": settings["target"],
        "use": "--set mixing.name=manual --set 'mixing.hparams.weights_by_domain="
               + json.dumps({kk: round(v, 6) for kk, v in wb.items()}) + "'"})
    _plot_sft(out / "fit.png", held)
    log(f"SFT law on {len(y)} evaluations: held-out final evaluation MAE {held['mae']:.4f} "
        f"({100 * held['rel_err_mean']:.2f}%)")
    log("found mixture: " + ", ".join(f"{dd} {v:.3f}" for dd, v in wb.items()))
    return {"fit": fit, "weights": wb, "seconds": time.perf_counter() - t0}


def _plot_sft(path, held) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    act, pred = np.asarray(held["actual"]), np.asarray(held["pred"])
    ax.scatter(act, pred, s=14)
    lo, hi = float(min(act.min(), pred.min())), float(max(act.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
    ax.set_xlabel("actual target loss (final evaluation, held out)")
    ax.set_ylabel("predicted by the SFT law")
    ax.set_title(f"SFT law: MAE {held['mae']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI
def add_parsers(sub) -> None:
    for method, text in (("dcpt", "D-CPT law: continual pre-training swarms over domain ratios "
                                  "(and sizes) -> law -> ratio under a general-loss budget"),
                         ("sft", "SFT effective-data law: fine-tuning swarm -> law -> weights")):
        p = sub.add_parser(method, help=text)
        p.add_argument("config", help="target config file (get_config(); get_search() optional)")
        p.add_argument("--init-from", default=None, metavar="RUN[,RUN...]",
                       help="pre-trained run(s) to continue (dcpt: one per proxy size)")
        p.add_argument("--out", default=None, help=f"output dir (default runs/search_{method}_<name>)")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="config override for the proxies and target")
        p.add_argument("--proxy-set", dest="proxy_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="config override for the proxies only")
        p.add_argument("--search-set", dest="search_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="search setting")


def run(args) -> int:
    from mixjax.config import ConfigError
    from mixjax.search.designs import DesignError
    from mixjax.search.regmix import FitError
    from mixjax.search.swarm import SwarmError
    try:
        target, proxy, settings = load_search_config(args.config, args.overrides,
                                                     args.search_overrides,
                                                     args.proxy_overrides)
        runs = init_runs(args.init_from, target)
        if args.method == "dcpt":
            check_dcpt_settings(settings)
        out = pathlib.Path(args.out or f"runs/search_{args.method}_{target.name}")
        fn = run_dcpt if args.method == "dcpt" else run_sft
        summary = fn(target, proxy, settings, runs, out)
    except (SearchError, ConfigError, DesignError, FitError, SwarmError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"weights: {out / 'weights.json'}   fit: {out / 'fit.json'}   "
          f"({summary['seconds']:.0f} s)")
    return 0
