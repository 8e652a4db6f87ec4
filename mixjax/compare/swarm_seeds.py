"""``mixjax compare CONFIG... --seeds N --swarm``: each static-mixture config's N seeds
trained as one proxy swarm (mixjax.search.swarm; proxy axis = seeds), instead of N runs.

Every config must train a static mixture (mixer ``uniform``, ``natural``,
``temperature`` or ``manual``, objective ``mixer``): its weights are the mixer's
initial weights, fixed for the run, which is exactly what a swarm proxy trains
(``mixing.apply_to`` sampling -> the ``upsample`` route, loss -> ``upweight``). Seeds
are the swarm's per-proxy seeds (``proxy_seed(train.seed, p)``, p = 0..N-1: model init
and batch composition); proxy p of every config has the same seed, so the comparison
against the baseline is paired by p. The proxies share the per-domain read pipelines,
so a seed's batches are not those of a separate ``mixjax train`` run with that seed
(mixjax.search.transfer). Resumable: each config's swarm checkpoints under
``OUT/swarm_<name>/``.

Report (``OUT/results_swarm.md``, ``.json``): per config, the final validation loss
averaged over the training domains and the per-domain perplexity, mean ± standard
error over seeds, and the paired 95% t-interval of the difference in average loss to
the baseline (mixjax.compare.stats). No test-split evaluation, weight plots or loss
curves (the full ``mixjax compare`` report needs run directories).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

STATIC = ("uniform", "natural", "temperature", "manual")


def check_static(cfg) -> None:
    """Refuses a config whose mixture is not static (before any data is built)."""
    from mixjax.compare.runs import CompareError
    if cfg.mixing.name not in STATIC or cfg.train.objective != "mixer":
        raise CompareError(f"config {cfg.name!r}: --swarm trains static mixtures only "
                           f"(mixing.name one of {STATIC}, train.objective 'mixer'), got "
                           f"mixing.name={cfg.mixing.name!r}, train.objective="
                           f"{cfg.train.objective!r}")
    if cfg.mixing.apply_to == "both":
        raise CompareError(f"config {cfg.name!r}: --swarm runs mixing.apply_to sampling "
                           "(upsample) or loss (upweight), not both")


def static_weights(cfg, domains, token_counts) -> np.ndarray:
    from mixjax import mixing
    check_static(cfg)
    mixer = mixing.build(cfg.mixing.name, dict(cfg.mixing.hparams), domains=tuple(domains),
                         token_counts=token_counts, apply_to=cfg.mixing.apply_to)
    return np.asarray(mixer.init(len(domains))["weights"], np.float64)


def compare_swarm(configs, *, seeds: int, overrides=(), out="runs/compare",
                  baseline: str | None = None, log=print) -> dict:
    from mixjax.compare import stats
    from mixjax.compare.runs import CompareError, plan_grid
    from mixjax.search import swarm, transfer
    from mixjax.train.data import build_data
    out = pathlib.Path(out)
    grid = plan_grid(list(configs), 1, list(overrides), out)   # names, fairness checks
    names = [r.method for r in grid]
    if baseline is None:
        uniform = [r.method for r in grid if r.cfg.mixing.name == "uniform"]
        if not uniform:
            raise CompareError("no baseline: none of the configs is the uniform mixture; pass "
                               f"--baseline NAME (methods: {', '.join(names)})")
        baseline = uniform[0]
    elif baseline not in names:
        raise CompareError(f"unknown baseline {baseline!r}; methods in this comparison: "
                           f"{', '.join(names)}")
    for r in grid:      # cheap checks of every config first
        check_static(r.cfg)
    plans = []
    for r in grid:      # every swarm built (memory checked) before anything trains
        cfg = r.cfg
        data = build_data(cfg)
        w = static_weights(cfg, data.domains, data.token_counts)
        rows, _, _ = transfer.seed_rows(w[None], seeds)
        try:
            swarm.check_config(cfg)
            sw = swarm.Swarm(cfg, rows, route="upweight" if cfg.mixing.apply_to == "loss"
                             else "upsample", strategy="auto", data=data)
        except ValueError as e:
            raise CompareError(f"config {r.method!r}: {e}") from None
        try:
            swarm.check_memory(sw)
        except ValueError as e:
            raise CompareError(f"config {r.method!r}: {e}") from None
        plans.append((r.method, sw))
    results = {}
    for name, sw in plans:
        path = out / f"swarm_{name}" / "result.json"
        if path.exists():
            res, _, _ = swarm.load_result(path)
            log(f"swarm {name}: reusing {path}")
        else:
            log(f"swarm {name}: {seeds} seeds x {sw.params_per_proxy} parameters, "
                f"{sw.cfg.train.steps} steps")
            res = swarm.train_swarm(sw, out / f"swarm_{name}", progress=False, log=log)
            swarm.save_result(res, sw.mixtures, sw.domains, path)
        idx = [list(res.eval_domains).index(d) for d in sw.domains]
        losses = np.where(res.alive[:, None], np.asarray(res.losses)[:, idx], np.nan)
        results[name] = {"domains": list(sw.domains), "losses": losses.tolist(),
                         "weights": sw.mixtures[0].tolist(), "alive": res.alive.tolist(),
                         "seconds": res.seconds}
    base = np.nanmean(np.asarray(results[baseline]["losses"]), axis=1)
    lines = [f"{seeds} seeds per config, each config one swarm; baseline {baseline}.", "",
             "| method | avg val loss (mean ± se) | Δ vs baseline (paired 95% CI) | "
             + " | ".join(f"ppl {d}" for d in results[baseline]["domains"]) + " |",
             "|---|---|---|" + "---|" * len(results[baseline]["domains"])]
    for name, rec in results.items():
        loss = np.asarray(rec["losses"])
        avg = np.nanmean(loss, axis=1)
        ok = np.isfinite(avg) & np.isfinite(base)
        ms = stats.mean_se(avg[ok].tolist())
        iv = stats.paired_interval(avg[ok].tolist(), base[ok].tolist())
        rec["avg_loss"], rec["vs_baseline"] = [ms.mean, ms.se, ms.n], [iv.mean, iv.low, iv.high]
        ppl = [stats.mean_se(np.exp(loss[ok, j]).tolist()).fmt(2) for j in range(loss.shape[1])]
        lines.append(f"| {name} | {ms.fmt(4)} | "
                     f"{'—' if name == baseline else iv.fmt(4)} | " + " | ".join(ppl) + " |")
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results_swarm.md"
    md.write_text("\n".join(lines) + "\n")
    (out / "results_swarm.json").write_text(json.dumps(
        {"baseline": baseline, "seeds": seeds, "methods": results}, indent=2) + "\n")
    return {"results_md": md, "methods": results, "baseline": baseline}
