"""``mixjax search law --sizes D1,D2[,D3]``: one swarm per proxy d_model over the same
mixtures, Shukor et al.'s scaling law L(N, D, h) fitted on every proxy evaluation, its
extrapolation checked with the largest size held out, and the law minimised at the
target model's (N, D) (:mod:`mixjax.search.laws`)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mixjax.search.phases import finish, target_size, train_swarms, write_weights
from mixjax.search.report import plot_fit
from mixjax.search.settings import SearchError, write_json


def run_scaling_search(target_cfg, proxy_cfg, settings, out: pathlib.Path, mixtures, data,
                       cons, *, seeds, train_target, log, t0) -> dict:
    """``--sizes``: one swarm per proxy d_model (the same mixtures), Shukor et al.'s law
    L(N, D, h) fitted on every proxy evaluation (N = parameters, D = tokens seen), its
    extrapolation to the largest size checked with that size held out, and the law
    minimised at the target model's (N, D)."""
    from mixjax import config as config_lib
    from mixjax.search import laws, regmix
    domains = tuple(data.domains)
    k = len(domains)
    sizes = sorted(int(x) for x in settings["sizes"])
    every, steps = proxy_cfg.train.eval_every, proxy_cfg.train.steps
    points = len([t for t in range(every, steps, every)]) + 1 if every else 1
    need = laws.num_params(settings["scaling_law"], k) + 1
    have = (len(sizes) - 1) * len(mixtures) * points
    if points < 2 or have < need:
        raise SearchError(
            f"the {settings['scaling_law']} law has {need - 1} parameters for {k} domains: "
            f"fitted on the {len(sizes) - 1} smaller sizes it needs >= {need} runs, and >= 2 "
            f"token counts per proxy (train.eval_every); these settings give "
            f"{len(sizes) - 1} sizes x {len(mixtures)} proxies x {points} evaluations = {have}")
    cfgs = {}
    for size in sizes:
        cfgs[f"d{size}"] = cfg = config_lib.from_dict(config_lib.to_dict(proxy_cfg))
        cfg.model.d_model = size
    results = train_swarms(
        cfgs, mixtures, settings, data, out, log,
        describe=lambda name: f"proxy size d_model={name[1:]} (search setting 'sizes')")
    n_rows, d_rows, h_rows, y_rows = [], [], [], []
    total_s = 0.0
    tokens_per_step = proxy_cfg.data.batch_size * proxy_cfg.data.seq_len
    for n_params, res in results.values():
        total_s += res.seconds
        for step, table in list(res.history) + [(res.steps, res.losses)]:
            ok = res.alive & np.all(np.isfinite(np.asarray(table)), axis=1)
            y = regmix.target_values(np.asarray(table)[ok], res.eval_domains, domains,
                                     settings["target"])
            n_rows += [n_params] * int(ok.sum())
            d_rows += [step * tokens_per_step] * int(ok.sum())
            h_rows.append(mixtures[ok])
            y_rows.append(y)
    fit_path = out / "fit.json"
    if fit_path.exists():
        fit = json.loads(fit_path.read_text())
    else:
        target_n, target_d = target_size(target_cfg, data)
        fit = laws.run_scaling_law(settings["scaling_law"], np.array(n_rows, np.float64),
                                   np.array(d_rows, np.float64), np.concatenate(h_rows),
                                   np.concatenate(y_rows), target_n, target_d, cons,
                                   restarts=settings["law_restarts"])
        fit["target"] = settings["target"]
        fit["proxies_used"] = len(y_rows[-1])
        fit["sizes"] = sizes
        write_json(fit_path, fit)
        plot_fit(out / "fit.png", np.asarray(fit["cv"]["actual"]), fit, "law")
    ex = fit["extrapolation"]
    log(f"scaling law ({settings['scaling_law']}): fitted on N = {ex['fit_N']}, held-out "
        f"largest N = {ex['held_out_N']:.0f}: MAE {ex['mae']:.4f}, mean relative error "
        f"{100 * ex['rel_err_mean']:.2f}%, Spearman {ex['spearman']:.3f}")
    weights_by_domain = write_weights("law", domains, fit, settings, out, log)
    return finish("law", domains, fit, weights_by_domain, target_cfg, settings, out,
                  seeds=seeds, train_target=train_target, log=log, swarm_seconds=total_s,
                  t0=t0)


