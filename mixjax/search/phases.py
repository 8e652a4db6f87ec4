"""The search phases every route shares: train (or reuse) the proxy swarms, the target
model's size, and the target models trained on the found mixture and the baselines
(``target/<mixture>/seed<s>/``, reused when finished with the same config) with
weights.json and results.md."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from mixjax import run_identity
from mixjax.run.signals import Interrupted
from mixjax.search.report import results_markdown
from mixjax.search.settings import SearchError, write_json


# ------------------------------------------------------------------------ proxies
def train_swarms(cfgs: dict, mixtures: np.ndarray, settings: dict, data, out: pathlib.Path,
                 log, describe=lambda name: f"proxy config {name}") -> dict:
    """``{name: (parameters per proxy, SwarmResult)}``: one swarm of ``mixtures`` per proxy
    config in ``cfgs`` (``out/swarm_<name>/``). Every swarm is built (and its memory
    checked) before any trains, so bad input costs no training; a finished swarm is
    reused. ``describe(name)`` names a config in an error."""
    from mixjax import config as config_lib
    from mixjax.search import swarm
    built = {}
    for name, cfg in cfgs.items():
        try:
            config_lib.validate(cfg)
            swarm.check_config(cfg)
            sw = swarm.Swarm(cfg, mixtures, route=settings["route"],
                             strategy=settings["strategy"], models=settings["models"],
                             data=data, data_shards=settings["data_shards"],
                             fsdp=settings["fsdp"])
        except ValueError as e:
            raise SearchError(f"{describe(name)}: {e}") from None
        swarm.check_memory(sw)
        built[name] = sw
    results = {}
    for name, sw in built.items():
        path = out / f"swarm_{name}" / "result.json"
        if path.exists():
            res, _, _ = swarm.load_result(path)
            log(f"swarm {name}: reusing {path}")
        else:
            log(f"swarm {name}: {sw.num_proxies} proxies x {sw.params_per_proxy} parameters "
                f"from {sw.cfg.model.init_from}, {sw.cfg.train.steps} steps")
            res = swarm.train_swarm(sw, out / f"swarm_{name}", progress=sw.cfg.train.progress,
                                    log=log)
            swarm.save_result(res, mixtures, sw.domains, path)
        results[name] = (sw.params_per_proxy, res)
    return results


def target_size(target_cfg, data) -> tuple[float, float]:
    """(N, D) of the target run: its parameter count and its training tokens."""
    import jax

    from mixjax.models import transformer
    from mixjax.train.loop import model_config
    _, abstract, _ = transformer.abstract_init(model_config(target_cfg, data.vocab_size))
    n = float(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)))
    d = float(target_cfg.train.steps * target_cfg.data.batch_size * target_cfg.data.seq_len)
    return n, d


# ------------------------------------------------------------------------ targets
def write_weights(method, domains, fit, settings, out: pathlib.Path, log) -> dict:
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
    write_json(out / "weights.json", wrec)
    log("found mixture: " + ", ".join(f"{d} {w:.3f}" for d, w in weights_by_domain.items()))
    if fit.get("warning"):
        log(f"warning: {fit['warning']}")
    return weights_by_domain


def finish(method, domains, fit, weights_by_domain, target_cfg, settings, out, *, seeds,
            train_target, log, swarm_seconds, t0) -> dict:
    """5. target models on the found mixture and the baselines; results.md."""
    evals: dict[str, list[dict]] = {}
    if train_target:
        mixtures_to_train = {"found": weights_by_domain}
        mixtures_to_train.update({b: b for b in settings["baselines"]})
        for name, mix in mixtures_to_train.items():
            evals[name] = [train_target(target_cfg, out / "target" / name / f"seed{s}", s, mix,
                                         log, name) for s in range(seeds)]
    summary = {"method": method, "domains": list(domains), "weights": weights_by_domain,
               "fit": fit, "evals": evals, "swarm_seconds": swarm_seconds,
               "seconds": time.perf_counter() - t0}
    text = results_markdown(summary, settings)
    (out / "results.md").write_text(text)
    summary["table"] = text
    return summary


def identity_of_saved(d):
    """A config dict saved in search.json, as :func:`run_identity.identity_dict` sees it."""
    from mixjax import config as config_lib
    try:
        return run_identity.identity_dict(config_lib.from_dict(d))
    except (config_lib.ConfigError, TypeError, AttributeError):
        return d


def train_target(cfg, run_dir: pathlib.Path, seed: int, mixture, log, name) -> dict:
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
