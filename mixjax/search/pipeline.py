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

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from mixjax import run_identity
from mixjax.run.signals import Interrupted


@dataclasses.dataclass(kw_only=True)
class SearchSettings:
    """The search settings (``get_search()`` and ``--search-set K=V``), typed and checked by
    the same engine as :class:`mixjax.config.Config` (``config.set_value``: a wrong type or
    an unknown key is an error naming the key, exit status 2)."""

    proxies: int = 32
    design: str = "regmix"            # regmix | dirichlet | lhs | onehot
    design_seed: int = 42
    route: str = "upsample"           # upsample | upweight
    strategy: str = "auto"            # vmap | map | auto (measured per backend)
    models: int = 1                   # devices of the models mesh axis (proxies)
    data_shards: int = 1              # devices of the data axis (each proxy's batch rows)
    fsdp: int = 1                     # devices of the fsdp axis (rows and d_model of params)
    proxy_overrides: list[str] = dataclasses.field(default_factory=list)  # target -> proxy config
    target: str | dict[str, int | float] = "average"   # average | a domain | {domain: weight}
    regressor: str = "auto"           # lightgbm | linear | auto (better held-out Spearman)
    lgbm_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # regmix.LGBM_PARAMS
    folds: int = 4
    samples: int = 100_000
    top_k: int = 128
    bootstrap: int = 32
    min_weight: dict[str, int | float] = dataclasses.field(default_factory=dict)
    max_weight: dict[str, int | float] = dataclasses.field(default_factory=dict)
    max_epochs: int | float | None = None   # at most E epochs of each domain in the target run
    law_restarts: int = 16
    # law: fit each proxy's step law on its eval history (train.eval_every) and fit the
    # mixture law to the losses it predicts at this step (Ye et al.'s nesting)
    extrapolate_step: int | float | None = None
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["uniform", "natural"])
    # law: proxy d_model values (2-3); one swarm per size and Shukor et al.'s scaling law
    # L(N, D, h) instead of Ye's law
    sizes: list[int] | None = None
    scaling_law: str = "additive"     # additive | joint (with sizes)
    # dcpt (cpt_search.py): the general and the domain corpus (two training domains), the
    # swarm's domain ratios r, the general-loss budget (1 + tau) x the general-only loss,
    # an optional target domain loss, and the law's eps
    general: str | None = None
    domain: str | None = None
    ratios: list[int | float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    tau: float = 0.05
    target_domain_loss: float | None = None
    dcpt_eps: float = 0.01
    # dcpt / sft: proxies per mixture under different seeds (the swarm's seed axis)
    seeds_per_mixture: int = 1


DEFAULTS: dict[str, Any] = dataclasses.asdict(SearchSettings())
METHODS = ("regmix", "law")
# Settings a repeated search may change: target-run baselines, and the device layout of
# the swarm (the same computation on another mesh; its checkpoint restores onto it).
LAYOUT_ONLY = ("baselines", "models", "data_shards", "fsdp")


class SearchError(ValueError):
    """Bad search input (exit status 2)."""


# --------------------------------------------------------------------- config
def load_search_config(path: str, overrides=(), search_overrides=(), proxy_overrides=()):
    """``(target Config, proxy Config, settings)`` from a search config file."""
    from mixjax import config as config_lib
    path = pathlib.Path(path)
    if not path.is_file():
        raise SearchError(f"config file {str(path)!r} does not exist")
    target = config_lib.load(path, overrides)
    spec = importlib.util.spec_from_file_location(f"_mixjax_search_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    root = str(path.resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(root)
    typed = SearchSettings()
    given = module.get_search() if hasattr(module, "get_search") else {}
    for key, value in list(given.items()) + [_split(s) for s in search_overrides]:
        if key not in DEFAULTS:
            raise SearchError(f"unknown search setting {key!r}; known: {sorted(DEFAULTS)}")
        try:
            config_lib.set_value(typed, key, value)
        except config_lib.ConfigError as e:
            raise SearchError(f"search setting {str(e)[len('config key '):]}"
                              if str(e).startswith("config key ") else str(e)) from None
    settings = dataclasses.asdict(typed)
    proxy = config_lib.from_dict(config_lib.to_dict(target))
    for item in list(settings["proxy_overrides"]) + list(overrides) + list(proxy_overrides):
        config_lib.apply_override(proxy, item)
    config_lib.validate(proxy)
    from mixjax.train import checks
    for c in (target, proxy):     # registered names (mixer, Method), before anything trains
        checks.check_names(c)
    return target, proxy, settings


def _split(item: str):
    from mixjax.config import parse_value
    if "=" not in item:
        raise SearchError(f"search setting {item!r} is not of the form key=value")
    k, v = item.split("=", 1)
    return k.strip(), parse_value(v.strip())


def check_settings(s: dict, method: str, k: int) -> None:
    from mixjax.search import designs, swarm
    if method not in METHODS:
        raise SearchError(f"unknown search method {method!r}; known: {METHODS}")
    if not isinstance(s["proxies"], int) or s["proxies"] < 1:
        raise SearchError(f"--proxies must be a positive integer, got {s['proxies']!r}")
    if s["design"] not in designs.DESIGNS:
        raise SearchError(f"search setting 'design': unknown {s['design']!r}; "
                          f"known: {list(designs.DESIGNS)}")
    if s["route"] not in swarm.ROUTES:
        raise SearchError(f"search setting 'route': must be one of {swarm.ROUTES}")
    if s["strategy"] not in swarm.STRATEGIES:
        raise SearchError(f"search setting 'strategy': must be one of {swarm.STRATEGIES}")
    if method == "regmix" and s["proxies"] < max(s["folds"], 4) * 2:
        raise SearchError(f"RegMix needs at least {max(s['folds'], 4) * 2} proxies for its "
                          f"{s['folds']}-fold held-out check, got {s['proxies']}")
    if s["sizes"] is not None:
        sizes = s["sizes"]
        if method != "law" or not isinstance(sizes, (list, tuple)) or len(set(sizes)) < 2 or \
                not all(isinstance(x, int) and x > 0 for x in sizes):
            raise SearchError("search setting 'sizes' (law only): a list of >= 2 distinct "
                              f"positive proxy d_model values, got {sizes!r}")
        if s["scaling_law"] not in ("additive", "joint"):
            raise SearchError("search setting 'scaling_law': additive or joint, got "
                              f"{s['scaling_law']!r}")
    elif method == "law":
        # every training fold of the held-out check must determine the law too
        f = max(int(s["folds"]), 2)
        need = next(p for p in range(k + 2, 100 * (k + 2)) if p - -(-p // f) >= k + 2)
        if s["proxies"] < need:
            raise SearchError(f"the mixing law has {k + 1} identifiable parameters per target "
                              f"for {k} domains: with its {f}-fold held-out check it needs at "
                              f"least {need} proxies, got {s['proxies']}")
    for b in s["baselines"]:
        if b not in ("uniform", "natural"):
            raise SearchError(f"search setting 'baselines': unknown {b!r} (uniform, natural)")


# ------------------------------------------------------------------------ phases
def _write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default) + "\n")
    tmp.replace(path)


def _default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


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
    out.mkdir(parents=True, exist_ok=True)
    # baselines only add target runs: a repeated search may add or drop them
    record = {"method": method, "domains": list(domains),
              "settings": {k: v for k, v in settings.items() if k not in LAYOUT_ONLY},
              "target_config": run_identity.identity_dict(target_cfg),
              "proxy_config": run_identity.identity_dict(proxy_cfg)}
    saved = out / "search.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        for key in ("target_config", "proxy_config"):   # written with other neutral keys
            old[key] = _identity_of_saved(old.get(key))
        diff = sorted(key for key in record if json.dumps(old.get(key), default=_default,
                                                          sort_keys=True)
                      != json.dumps(record[key], default=_default, sort_keys=True))
        if diff:
            raise SearchError(f"--out {str(out)!r} holds a different search ({', '.join(diff)} "
                              "differ); pick another --out or repeat the same command")
    else:
        _write_json(saved, record)

    # 1. design
    design_path = out / "design.json"
    if design_path.exists():
        mixtures = np.array(json.loads(design_path.read_text())["mixtures"])
    else:
        mixtures = designs.make_design(settings["design"], settings["proxies"], domains,
                                       prior=prior, seed=settings["design_seed"],
                                       constraints=cons)
        _write_json(design_path, {"design": settings["design"], "domains": list(domains),
                                  "mixtures": mixtures, "lo": cons.lo, "hi": cons.hi})
    log(f"design: {len(mixtures)} {settings['design']} mixtures over {k} domains")

    if settings["sizes"] is not None:
        return _run_scaling_search(target_cfg, proxy_cfg, settings, out, mixtures, data, cons,
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
        _write_json(fit_path, fit)
        _plot_fit(out / "fit.png", y, fit, method)
    weights_by_domain = _write_weights(method, domains, fit, settings, out, log)

    return _finish(method, domains, fit, weights_by_domain, target_cfg, settings, out,
                   seeds=seeds, train_target=train_target, log=log,
                   swarm_seconds=res.seconds, t0=t0)


def _write_weights(method, domains, fit, settings, out: pathlib.Path, log) -> dict:
    weights = np.asarray(fit["weights"], np.float64)
    if not np.all(np.isfinite(weights)):
        raise SearchError("the search returned non-finite weights; see fit.json")
    weights_by_domain = {d: float(w) for d, w in zip(domains, weights)}
    wrec = {"method": method, "domains": list(domains), "weights_by_domain": weights_by_domain,
            "predicted_target_loss": fit["predicted"], "target": settings["target"],
            "use": "--set mixing.name=manual --set 'mixing.hparams.weights_by_domain="
                   + json.dumps({d: round(w, 6) for d, w in weights_by_domain.items()}) + "'"}
    if "bootstrap" in fit:
        wrec["predicted_interval90"] = fit["bootstrap"]["pred_found_interval90"]
        wrec["weights_std"] = dict(zip(domains, fit["bootstrap"]["weights_std"]))
    _write_json(out / "weights.json", wrec)
    log("found mixture: " + ", ".join(f"{d} {w:.3f}" for d, w in weights_by_domain.items()))
    if fit.get("warning"):
        log(f"warning: {fit['warning']}")
    return weights_by_domain


def _finish(method, domains, fit, weights_by_domain, target_cfg, settings, out, *, seeds,
            train_target, log, swarm_seconds, t0) -> dict:
    """5. target models on the found mixture and the baselines; results.md."""
    evals: dict[str, list[dict]] = {}
    if train_target:
        mixtures_to_train = {"found": weights_by_domain}
        mixtures_to_train.update({b: b for b in settings["baselines"]})
        for name, mix in mixtures_to_train.items():
            evals[name] = [_train_target(target_cfg, out / "target" / name / f"seed{s}", s, mix,
                                         log, name) for s in range(seeds)]
    summary = {"method": method, "domains": list(domains), "weights": weights_by_domain,
               "fit": fit, "evals": evals, "swarm_seconds": swarm_seconds,
               "seconds": time.perf_counter() - t0}
    text = results_markdown(summary, settings)
    (out / "results.md").write_text(text)
    summary["table"] = text
    return summary


def _run_scaling_search(target_cfg, proxy_cfg, settings, out: pathlib.Path, mixtures, data,
                        cons, *, seeds, train_target, log, t0) -> dict:
    """``--sizes``: one swarm per proxy d_model (the same mixtures), Shukor et al.'s law
    L(N, D, h) fitted on every proxy evaluation (N = parameters, D = tokens seen), its
    extrapolation to the largest size checked with that size held out, and the law
    minimised at the target model's (N, D)."""
    from mixjax import config as config_lib
    from mixjax.search import laws, regmix, swarm
    from mixjax.train.loop import model_config
    from mixjax.models import transformer
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
    swarms = {}
    for size in sizes:   # every size is built (and its memory checked) before any trains
        cfg = config_lib.from_dict(config_lib.to_dict(proxy_cfg))
        cfg.model.d_model = size
        try:
            config_lib.validate(cfg)
            sw = swarm.Swarm(cfg, mixtures, route=settings["route"],
                             strategy=settings["strategy"], models=settings["models"],
                             data=data, data_shards=settings["data_shards"],
                             fsdp=settings["fsdp"])
        except ValueError as e:
            raise SearchError(f"proxy size d_model={size} (search setting 'sizes'): {e}") \
                from None
        swarm.check_memory(sw)
        swarms[size] = sw
    n_rows, d_rows, h_rows, y_rows = [], [], [], []
    total_s = 0.0
    tokens_per_step = proxy_cfg.data.batch_size * proxy_cfg.data.seq_len
    for size, sw in swarms.items():
        result_path = out / f"swarm_d{size}" / "result.json"
        if result_path.exists():
            res, _, _ = swarm.load_result(result_path)
            log(f"swarm d_model={size}: reusing {result_path}")
        else:
            log(f"swarm d_model={size}: {sw.num_proxies} proxies x {sw.params_per_proxy} "
                f"parameters, {steps} steps")
            res = swarm.train_swarm(sw, out / f"swarm_d{size}",
                                    progress=proxy_cfg.train.progress, log=log)
            swarm.save_result(res, mixtures, domains, result_path)
        total_s += res.seconds
        for step, table in list(res.history) + [(res.steps, res.losses)]:
            ok = res.alive & np.all(np.isfinite(np.asarray(table)), axis=1)
            y = regmix.target_values(np.asarray(table)[ok], res.eval_domains, domains,
                                     settings["target"])
            n_rows += [sw.params_per_proxy] * int(ok.sum())
            d_rows += [step * tokens_per_step] * int(ok.sum())
            h_rows.append(mixtures[ok])
            y_rows.append(y)
    fit_path = out / "fit.json"
    if fit_path.exists():
        fit = json.loads(fit_path.read_text())
    else:
        _, abstract, _ = transformer.abstract_init(model_config(target_cfg, data.vocab_size))
        target_n = int(sum(np.prod(x.shape) for x in jax_leaves(abstract)))
        target_d = target_cfg.train.steps * target_cfg.data.batch_size * target_cfg.data.seq_len
        fit = laws.run_scaling_law(settings["scaling_law"], np.array(n_rows, np.float64),
                                   np.array(d_rows, np.float64), np.concatenate(h_rows),
                                   np.concatenate(y_rows), target_n, target_d, cons,
                                   restarts=settings["law_restarts"])
        fit["target"] = settings["target"]
        fit["proxies_used"] = len(y_rows[-1])
        fit["sizes"] = sizes
        _write_json(fit_path, fit)
        _plot_fit(out / "fit.png", np.asarray(fit["cv"]["actual"]), fit, "law")
    ex = fit["extrapolation"]
    log(f"scaling law ({settings['scaling_law']}): fitted on N = {ex['fit_N']}, held-out "
        f"largest N = {ex['held_out_N']:.0f}: MAE {ex['mae']:.4f}, mean relative error "
        f"{100 * ex['rel_err_mean']:.2f}%, Spearman {ex['spearman']:.3f}")
    weights_by_domain = _write_weights("law", domains, fit, settings, out, log)
    return _finish("law", domains, fit, weights_by_domain, target_cfg, settings, out,
                   seeds=seeds, train_target=train_target, log=log, swarm_seconds=total_s,
                   t0=t0)


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


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


def _identity_of_saved(d):
    """A config dict saved in search.json, as :func:`run_identity.identity_dict` sees it."""
    from mixjax import config as config_lib
    try:
        return run_identity.identity_dict(config_lib.from_dict(d))
    except (config_lib.ConfigError, TypeError, AttributeError):
        return d


def _train_target(cfg, run_dir: pathlib.Path, seed: int, mixture, log, name) -> dict:
    from mixjax import config as config_lib
    from mixjax.train import loop
    c = config_lib.from_dict(config_lib.to_dict(cfg))
    c.name, c.train.run_dir, c.train.seed, c.data.seed = f"{cfg.name}_{name}", str(run_dir), \
        seed, seed
    c.train.progress = False
    c.mixing.apply_to, c.mixing.sample_reweight = None, None
    if isinstance(mixture, dict):
        c.mixing.name, c.mixing.hparams = "manual", {"weights_by_domain": dict(mixture)}
    else:
        c.mixing.name, c.mixing.hparams = mixture, {}
    config_lib.validate(c)
    legacy = run_identity.read_marker(run_dir)     # a result.json of a run of another mixture
    if legacy is not None and legacy["config_hash"] is None and \
            legacy["record"].get("mixture") != mixture:
        raise SearchError(f"{run_dir} was trained on another mixture "
                          f"({legacy['record'].get('mixture')}); remove it or pick another --out")

    def train(resume: bool) -> dict:
        log(f"target {name} seed {seed}: {c.train.steps} steps -> {run_dir}")
        result = loop.train(c, resume=resume)
        if result.interrupted:
            raise Interrupted(f"target run {run_dir} stopped by signal {result.signal}; the same "
                              "command resumes it", result.signal)
        return {"mixture": mixture, "eval": result.final_eval}

    try:
        rec, _ = run_identity.train_or_reuse(
            c, run_dir, train, log=lambda m: log(f"target {name} seed {seed}: {m}"))
    except run_identity.RunIdentityError as e:
        raise SearchError(str(e)) from None
    return rec["eval"]


# ------------------------------------------------------------------------ report
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


def _plot_fit(path: pathlib.Path, y: np.ndarray, fit: dict, method: str) -> None:
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


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, name: str):
    sub = parser.add_subparsers(dest="method", required=True)
    helps = {"regmix": "RegMix: swarm -> LightGBM/linear fit -> top-k search -> target models",
             "law": "Data Mixing Law (Ye et al.): swarm -> law fit -> simplex search -> targets"}
    for method in METHODS:
        p = sub.add_parser(method, help=helps[method])
        p.add_argument("config", help="target config file (get_config(); get_search() optional)")
        p.add_argument("--proxies", type=int, default=None, help="number of proxies")
        if method == "law":
            p.add_argument("--sizes", default=None, metavar="D1,D2[,D3]",
                           help="proxy d_model values: one swarm per size and the scaling "
                                "law L(N, D, h) of Shukor et al. (search setting 'sizes')")
        p.add_argument("--out", default=None, help="output dir (default runs/search_<method>_<name>)")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="config override for the proxies and targets")
        p.add_argument("--proxy-set", dest="proxy_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="config override for the proxies only")
        p.add_argument("--search-set", dest="search_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help=f"search setting, one of {sorted(DEFAULTS)}")
        p.add_argument("--seeds", type=int, default=1, help="target-model seeds per mixture")
        p.add_argument("--no-target", action="store_true", help="stop after the search")
    d = sub.add_parser("domain2vec", help="Domain2Vec: meta-domain classifier -> domain vectors -> "
                       "the mixture best aligned with the validation set (training-free)")
    d.add_argument("config", help="config file: its data section (corpus or spec, data.domains) "
                                  "names the domains; get_search()['target'] is read if present")
    d.add_argument("--out", default=None, help="output dir (default runs/search_domain2vec_<name>)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override")
    d.add_argument("--target", default=None,
                   help="average (default), a domain (may be outside data.domains) or a JSON "
                        "{domain: weight}")
    d.add_argument("--meta-domains", default="source",
                   help="'source' (the records' source field) or K (k-means clusters)")
    d.add_argument("--docs", type=int, default=400, help="documents per domain (default 400)")
    d.add_argument("--distance", default="l2", help="l2 (default) or kl")
    d.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("skillit-graph", help="Skill-it skills graph from K one-hot proxies "
                       "(one swarm) -> graph.npy for mixing.hparams.graph")
    g.add_argument("config", help="proxy config file (model, optimiser, data, train.steps)")
    g.add_argument("--out", required=True, help="the graph file to write (.npy; .json beside it)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the proxies")
    g.add_argument("--seeds", type=int, default=1, help="one-hot proxies per domain (averaged)")
    g.add_argument("--keep-negative", action="store_true",
                   help="keep negative entries (SkillIt then needs clip_negative=True)")
    return sub


def run(args: argparse.Namespace) -> int:
    from mixjax.config import ConfigError
    from mixjax.search.designs import DesignError
    from mixjax.search.regmix import FitError
    from mixjax.search.swarm import SwarmError
    from mixjax.train.loop import RunDirError
    if args.method == "skillit-graph":
        return _run_skillit_graph(args)
    if args.method == "domain2vec":
        return _run_domain2vec(args)
    # Multi-host (MIXJAX_DISTRIBUTED=1, set by scripts/launch_*.sh): join the job before any
    # other JAX call; a no-op otherwise. Every process runs every phase (the fit and search
    # are cheap and deterministic); the swarm is one job across all of them.
    from mixjax.parallel import distributed
    distributed.initialize()
    try:
        extra = list(args.search_overrides)
        if args.proxies is not None:
            extra.append(f"proxies={args.proxies}")
        if getattr(args, "sizes", None):
            try:
                sizes = [int(x) for x in args.sizes.split(",")]
            except ValueError:
                raise SearchError(f"--sizes must be comma-separated integers (proxy d_model "
                                  f"values), got {args.sizes!r}") from None
            extra.append(f"sizes={sizes}")
        if args.seeds < 1:
            raise SearchError(f"--seeds must be >= 1, got {args.seeds}")
        target, proxy, settings = load_search_config(args.config, args.overrides, extra,
                                                     args.proxy_overrides)
        out = pathlib.Path(args.out or f"runs/search_{args.method}_{target.name}")
        summary = run_search(args.method, target, proxy, settings, out, seeds=args.seeds,
                             train_target=not args.no_target)
    except (SearchError, ConfigError, DesignError, FitError, SwarmError, RunDirError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    print(f"weights: {out / 'weights.json'}   report: {out / 'results.md'}   "
          f"({summary['seconds']:.0f} s)")
    return 0


def _run_skillit_graph(args: argparse.Namespace) -> int:
    from mixjax import config as config_lib
    from mixjax.config import ConfigError
    from mixjax.search import skillit_graph
    from mixjax.search.swarm import SwarmError
    try:
        out = pathlib.Path(args.out)
        if out.suffix != ".npy":
            raise SearchError(f"--out must name a .npy file, got {args.out!r}")
        if out.exists():
            raise SearchError(f"--out {args.out!r} exists; remove it or pick another path")
        cfg = config_lib.load(args.config, args.overrides)
        graph = skillit_graph.estimate(cfg, out, seeds=args.seeds,
                                       clip_negative=not args.keep_negative)
    except (SearchError, ConfigError, SwarmError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(np.array2string(graph, precision=3, suppress_small=True))
    print(f"graph: {out}   details: {out.with_suffix('.json')}")
    return 0



def _run_domain2vec(args: argparse.Namespace) -> int:
    from mixjax.search import domain2vec
    return domain2vec.run_cli(args)
