"""``mixjax search``: swarm -> fit -> search -> target models, in resumable phases.

    mixjax search regmix CONFIG [--proxies N] [--out DIR] [--set K=V ...] [--proxy-set K=V ...]
                                [--search-set K=V ...] [--seeds N] [--no-target]
    mixjax search law    CONFIG ...            (the Data Mixing Law of Ye et al. instead of RegMix)
    mixjax search domain2vec CONFIG [--out DIR] [--target T] [--meta-domains source|K]
                                (training-free: meta-domain classifier vectors, domain2vec.py)
    mixjax search skillit-graph CONFIG --out graph.npy [--set K=V ...] [--seeds N]
                                (Skill-it's skills graph from K one-hot proxies: skillit_graph.py)
    mixjax search dcpt   CONFIG --init-from RUN[,RUN]  (the D-CPT law; cpt_search.py)
    mixjax search sft    CONFIG [--init-from RUN]      (the SFT effective-data law; cpt_search.py)
    mixjax search law    CONFIG --sizes 16,32,64 (one swarm per proxy d_model, Shukor et al.'s
                                                  scaling law L(N, D, h); extrapolation to the
                                                  largest size held out is reported)

CONFIG is a config file whose ``get_config()`` gives the *target* model's Config and
whose optional ``get_search()`` gives a dict of search settings (:data:`DEFAULTS`),
including ``proxy_overrides``: the dotted overrides that turn the target config into
the proxy config (a smaller model, fewer steps). Phases, each written to ``--out``
and reused when the command is repeated (an interrupted search continues; the swarm
resumes from its checkpoint):

    design.json     the proxies' mixtures (designs.py) and the constraints
    swarm/          the swarm's checkpoints, metrics.jsonl, result.json (per-proxy eval)
    swarm_d<size>/  with --sizes: one swarm per proxy d_model (same mixtures)
    fit.json        the fit (regmix.py or laws.py): held-out quality, found mixture,
                    predicted loss and its bootstrap interval; fit.png: predicted vs actual
    weights.json    the found mixture, usable in any config: mixing.name=manual with
                    mixing.hparams.weights_by_domain = weights.json's "weights_by_domain"
    target/<mixture>/seed<s>/   the target model trained on the found mixture and on the
                    baselines (uniform, natural); result.json marks a finished run
    results.md      the found mixture, the fit quality and per-domain perplexity of the
                    target models (mean ± std over seeds)

Bad input (unknown target domain, empty constraint set, too few proxies for a law,
a swarm larger than memory, an --out that holds a different search) is reported
in one message and exit status 2 before anything trains.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable

import numpy as np

from mixjax import run_identity
from mixjax.search.phases import finish, identity_of_saved, write_weights
from mixjax.search.report import plot_fit
from mixjax.search.scaling_search import run_scaling_search
from mixjax.search.settings import LAYOUT_ONLY, SearchError, check_settings, claim_out, \
    write_json


def run_search(method: str, target_cfg, proxy_cfg, settings: dict, out: pathlib.Path, *,
               seeds: int = 1, train_target: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Every phase (module docstring); returns a summary dict."""
    from mixjax.search import designs, laws, regmix, swarm
    from mixjax.train.data import build_data
    t0 = time.perf_counter()
    swarm.check_config(proxy_cfg)
    data = build_data(proxy_cfg)
    domains = tuple(data.domains)
    k = len(domains)
    check_settings(settings, method, k)
    if settings["extrapolate_step"] is not None:
        every, steps = proxy_cfg.train.eval_every, proxy_cfg.train.steps
        if method != "law" or not every or steps // every < 4:
            raise SearchError("search setting 'extrapolate_step' (law only) needs >= 4 proxy "
                              f"evaluations: the proxy config has train.steps={steps}, "
                              f"train.eval_every={every}")
    eval_domains = domains + tuple(getattr(data, "heldout_domains", ()))
    # the target is checked now (a dummy loss table), not after the swarm
    regmix.target_values(np.zeros((1, len(eval_domains))), eval_domains, domains,
                         settings["target"])
    counts = np.asarray(data.token_counts, np.float64)
    prior = counts / counts.sum()
    budget = target_cfg.train.steps * target_cfg.data.batch_size * target_cfg.data.seq_len
    cons = designs.make_constraints(domains, min_weight=settings["min_weight"],
                                    max_weight=settings["max_weight"],
                                    max_epochs=settings["max_epochs"], budget_tokens=budget,
                                    token_counts=counts)
    # baselines only add target runs: a repeated search may add or drop them
    claim_out(out, "search.json", {
        "method": method, "domains": list(domains),
        "settings": {k: v for k, v in settings.items() if k not in LAYOUT_ONLY},
        "target_config": run_identity.identity_dict(target_cfg),
        "proxy_config": run_identity.identity_dict(proxy_cfg)},
        # configs saved with other neutral keys
        normalise=lambda key, v: identity_of_saved(v) if key.endswith("_config") else v)

    # 1. design
    design_path = out / "design.json"
    if design_path.exists():
        mixtures = np.array(json.loads(design_path.read_text())["mixtures"])
    else:
        mixtures = designs.make_design(settings["design"], settings["proxies"], domains,
                                       prior=prior, seed=settings["design_seed"],
                                       constraints=cons)
        write_json(design_path, {"design": settings["design"], "domains": list(domains),
                                  "mixtures": mixtures, "lo": cons.lo, "hi": cons.hi})
    log(f"design: {len(mixtures)} {settings['design']} mixtures over {k} domains")

    if settings["sizes"] is not None:
        return run_scaling_search(target_cfg, proxy_cfg, settings, out, mixtures, data, cons,
                                   seeds=seeds, train_target=train_target, log=log, t0=t0)

    # 2. swarm
    swarm_dir = out / "swarm"
    result_path = swarm_dir / "result.json"
    if result_path.exists():
        res, mixtures, _ = swarm.load_result(result_path)
        log(f"swarm: reusing {result_path}")
    else:
        sw = swarm.Swarm(proxy_cfg, mixtures, route=settings["route"],
                         strategy=settings["strategy"], models=settings["models"], data=data,
                         data_shards=settings["data_shards"], fsdp=settings["fsdp"])
        est = swarm.check_memory(sw)
        log(f"swarm: {sw.num_proxies} proxies x {sw.params_per_proxy} parameters, route "
            f"{sw.route}, strategy {sw.strategy}, {proxy_cfg.train.steps} steps, estimated "
            f"memory {est['total'] / 2**20:.0f} MiB")
        res = swarm.train_swarm(sw, swarm_dir, progress=proxy_cfg.train.progress, log=log)
        swarm.save_result(res, mixtures, domains, result_path)
        log(f"swarm: done in {res.seconds:.0f} s; {int(res.alive.sum())}/{len(res.alive)} "
            "proxies finished without diverging")
    alive = res.alive
    if alive.sum() < len(alive):
        log(f"swarm: dropping {int((~alive).sum())} diverged proxies from the fit: "
            f"{np.flatnonzero(~alive).tolist()}")
    x = mixtures[alive]
    losses = res.losses[alive]
    if settings["extrapolate_step"] is not None:
        losses = extrapolate_losses(res, alive, float(settings["extrapolate_step"]),
                                    settings["law_restarts"])
        log(f"step laws: per-proxy losses extrapolated to step {settings['extrapolate_step']}")
    y = regmix.target_values(losses, res.eval_domains, domains, settings["target"])

    # 3-4. fit and search
    fit_path = out / "fit.json"
    if fit_path.exists():
        fit = json.loads(fit_path.read_text())
    else:
        if method == "regmix":
            fit = regmix.run(x, y, prior, regressor=settings["regressor"],
                             folds=settings["folds"], num_samples=settings["samples"],
                             top_k=settings["top_k"], boot=settings["bootstrap"],
                             constraints=cons, params=settings["lgbm_params"])
        else:
            pi = regmix.target_weights(res.eval_domains, domains, settings["target"])
            fit = laws.run_mixture_law(x, losses, pi, cons,
                                       restarts=settings["law_restarts"],
                                       boot=min(settings["bootstrap"], 16),
                                       folds=settings["folds"])
        fit["target"] = settings["target"]
        fit["proxies_used"] = int(alive.sum())
        write_json(fit_path, fit)
        plot_fit(out / "fit.png", y, fit, method)
    weights_by_domain = write_weights(method, domains, fit, settings, out, log)

    return finish(method, domains, fit, weights_by_domain, target_cfg, settings, out,
                   seeds=seeds, train_target=train_target, log=log,
                   swarm_seconds=res.seconds, t0=t0)


def extrapolate_losses(res, alive: np.ndarray, step: float, restarts: int) -> np.ndarray:
    """float[P_alive, K'] losses at ``step`` from a step law L(s) = e^c + (k/s)^alpha
    fitted to each proxy's and domain's eval history (``laws.fit_power``)."""
    from mixjax.search import laws
    steps = np.array([s for s, _ in res.history] + [res.steps], np.float64)
    table = np.stack([np.asarray(v) for _, v in res.history] + [res.losses])  # [T, P, K']
    if len(steps) < 4:
        raise SearchError(f"extrapolate_step needs >= 4 evaluations per proxy (set "
                          f"train.eval_every in the proxy config); the swarm has {len(steps)}")
    out = np.zeros((int(alive.sum()), table.shape[2]))
    for row, p in enumerate(np.flatnonzero(alive)):
        for j in range(table.shape[2]):
            fit = laws.fit_power(steps, table[:, p, j], restarts=max(restarts, 8), seed=p)
            out[row, j] = fit.predict(np.array([step]))[0]
    return out


