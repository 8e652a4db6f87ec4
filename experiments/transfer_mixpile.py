"""Does a mixture ranking found at proxy scale hold at a larger target scale? (mixpile-tiny)

Command (from the repository root):

    .venv/bin/python experiments/transfer_mixpile.py --out runs/transfer_mixpile \
        [--found runs/search_tiny_regmix/weights.json ...]
    .venv/bin/python experiments/transfer_mixpile.py --smoke --out runs/transfer_smoke

What it runs: >= 8 static mixtures of mixpile-tiny's 8 domains (uniform, natural,
temperature tau = 2 and tau = 5 on the token counts, four one-hot-heavy mixtures with
0.6 on code / math / news / literature and the rest spread uniformly, and every found
mixture given with ``--found``, a search's weights.json), each trained

* at proxy scale: 1 layer, d_model 32 (about 21 k parameters), ``--proxy-seeds`` (3)
  seeds, in ONE swarm whose proxy axis is mixtures x seeds (mixjax.search.transfer);
* at target scale: configs/lm_tiny_uniform.py's model (2 layers, d_model 128, about
  0.5 M parameters, > 20x the proxy), ``--target-seeds`` (3) seeds, in one swarm too.

Both scales see 16 x 128 tokens per step (proxy 400 steps, target 800). The score of a
run is its final validation loss averaged uniformly over the 8 domains. Reported
(results.md, results.json): per-mixture mean +- std over seeds at both scales, Spearman
and Kendall rank correlation between the scales' means, and the regret of picking the
proxy-scale best (its target loss minus the best target loss), each with a 90%
bootstrap interval over mixtures and seeds (mixjax.search.transfer.rank_transfer).

Resumable: each swarm checkpoints under OUT/{proxy,target}/ and a finished swarm's
result.json is reused, so an interrupted run continues where it stopped.

Runtime and result (2026-12-05, shared 2-core machine, load 3-9; docs/search.md section 6):

* the full study with the two found mixtures (``--found runs/search_tiny_regmix/weights.json
  runs/search_tiny_sizes/weights.json``, 10 mixtures): 49 min wall (target swarm ~46 min).
  Spearman 1.000 and Kendall 1.000 (90% bootstrap [0.43, 0.96] and [0.31, 0.90]: resamples
  reorder the near-tied balanced mixtures); regret of the proxy pick (uniform) 0.000 nats
  [0, 0.053]. Balanced < one-hot-heavy < found (vertex) mixtures at both scales.
* ``--smoke`` (proxy d_model 16, 7.6 k parameters / target d_model 64, 2 layers, 118 k
  parameters, 15.5x; 8 x 32 tokens per step; 10 steps; 3 seeds each): 1 min 37 s; a
  pipeline check only. ``--smoke --steps 300``: 3 min 28 s, Spearman 0.64 [-0.12, 0.87].
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEAVY = ("code", "math", "news", "literature")


def mixtures(domains, counts, found_paths) -> tuple[list[str], np.ndarray]:
    k = len(domains)
    counts = np.asarray(counts, np.float64)
    names, rows = ["uniform", "natural"], [np.full(k, 1.0 / k), counts / counts.sum()]
    for tau in (2.0, 5.0):
        p = counts ** (1.0 / tau)
        names.append(f"temperature{tau:g}")
        rows.append(p / p.sum())
    for d in HEAVY:
        h = np.full(k, 0.4 / (k - 1))
        h[domains.index(d)] = 0.6
        names.append(f"heavy_{d}")
        rows.append(h)
    for path in found_paths:
        w = json.loads(pathlib.Path(path).read_text())["weights_by_domain"]
        missing = sorted(set(domains) - set(w))
        if missing:
            raise SystemExit(f"error: --found {path}: no weight for domain(s) {missing}")
        h = np.array([float(w[d]) for d in domains])
        names.append(f"found_{pathlib.Path(path).parent.name}")
        rows.append(h / h.sum())
    return names, np.asarray(rows)


def configs(smoke: bool, steps: int | None = None):
    from configs.lm_tiny_uniform import get_config
    target = get_config()
    target.name = "transfer_target"
    target.data.sampler = "stratified"
    target.train.progress = False
    target.train.eval_every = 0
    target.train.ckpt_every = 100
    target.train.steps = 800
    if smoke:
        target.data.seq_len, target.data.batch_size = 32, 8
        target.model.d_model, target.model.num_heads = 64, 2
        target.train.steps, target.train.ckpt_every = 10, 5
        target.eval.num_seqs = 4
    from mixjax import config as config_lib
    proxy = config_lib.from_dict(config_lib.to_dict(target))
    proxy.name = "transfer_proxy"
    proxy.model.d_model, proxy.model.num_layers, proxy.model.num_heads = \
        (16, 1, 2) if smoke else (32, 1, 2)
    proxy.train.steps = 10 if smoke else 400
    if steps is not None:            # --steps: both scales (the smoke sizes' medium variant)
        for c in (target, proxy):
            c.train.steps, c.train.ckpt_every = steps, max(steps // 4, 1)
    for c in (target, proxy):
        config_lib.validate(c)
    return proxy, target


def train(cfg, rows, out: pathlib.Path, data, log) -> tuple[np.ndarray, int, float]:
    """Per-row final average validation loss, parameters per proxy, seconds."""
    from mixjax.search import regmix, swarm
    sw = swarm.Swarm(cfg, rows, route="upsample", strategy="auto", data=data)
    swarm.check_memory(sw)
    path = out / "result.json"
    if path.exists():
        res, _, _ = swarm.load_result(path)
        log(f"{out.name}: reusing {path}")
    else:
        log(f"{out.name}: {sw.num_proxies} proxies x {sw.params_per_proxy} parameters, "
            f"{cfg.train.steps} steps")
        res = swarm.train_swarm(sw, out, progress=False, log=log)
        swarm.save_result(res, rows, sw.domains, path)
    y = regmix.target_values(res.losses, res.eval_domains, sw.domains, "average")
    y = np.where(res.alive, y, np.nan)
    return y, sw.params_per_proxy, res.seconds


def markdown(names, stats, n_proxy, n_target, args) -> str:
    b = stats.get("bootstrap", {})
    iv = lambda k: f"[{b[k][0]:.3f}, {b[k][1]:.3f}]" if k in b else ""   # noqa: E731
    lines = [f"Proxy {n_proxy:,} parameters x {stats['proxy_seeds']} seeds, target "
             f"{n_target:,} parameters ({n_target / n_proxy:.1f}x) x {stats['target_seeds']} "
             f"seeds; {stats['mixtures']} mixtures, {args.steps or 'default'} steps"
             f"{' (smoke sizes)' if args.smoke else ''}.",
             "", f"Spearman {stats['spearman']:.3f} {iv('spearman')}, Kendall "
             f"{stats['kendall']:.3f} {iv('kendall')} (90% bootstrap); regret of the proxy "
             f"pick ({names[stats['picked']]}) {stats['regret']:.4f} {iv('regret')} nats, "
             f"{100 * stats['regret_rel']:.2f}% (best at target: {names[stats['best']]}).", "",
             "| mixture | proxy loss | target loss (mean ± std) | proxy rank | target rank |",
             "|---|---|---|---|---|"]
    pm, tm, ts = (np.asarray(stats[k]) for k in ("proxy_mean", "target_mean", "target_std"))
    pr, tr = pm.argsort().argsort() + 1, tm.argsort().argsort() + 1
    for i, n in enumerate(names):
        lines.append(f"| {n} | {pm[i]:.4f} | {tm[i]:.4f} ± {ts[i]:.4f} | {pr[i]} | {tr[i]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/transfer_mixpile")
    ap.add_argument("--found", nargs="*", default=[], help="weights.json of searches")
    ap.add_argument("--proxy-seeds", type=int, default=3)
    ap.add_argument("--target-seeds", type=int, default=3)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and 10 steps (pipeline check)")
    ap.add_argument("--steps", type=int, default=None,
                    help="train steps at both scales (with --smoke: the small sizes, longer)")
    args = ap.parse_args(argv)
    if args.target_seeds < 3 and not args.smoke:
        raise SystemExit("error: --target-seeds must be >= 3 (the study's intervals need them)")
    from mixjax.search import transfer
    from mixjax.train.data import build_data
    t0 = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proxy, target = configs(args.smoke, args.steps)
    data = build_data(proxy)
    domains = list(data.domains)
    names, mix = mixtures(domains, data.token_counts, args.found)
    (out / "mixtures.json").write_text(json.dumps(
        {"domains": domains, "mixtures": dict(zip(names, mix.tolist()))}, indent=2) + "\n")
    log = print
    results = {}
    for scale, cfg, seeds in (("proxy", proxy, args.proxy_seeds),
                              ("target", target, args.target_seeds)):
        rows, mi, _ = transfer.seed_rows(mix, seeds)
        y, n, secs = train(cfg, rows, out / scale, data, log)
        results[scale] = (transfer.by_mixture(y, mi, seeds), n, secs)
    (pl, n_p, s_p), (tl, n_t, s_t) = results["proxy"], results["target"]
    if np.isnan(pl).any() or np.isnan(tl).any():
        log("warning: diverged runs are excluded from the seed means")
    keep = ~(np.isnan(pl).all(axis=1) | np.isnan(tl).all(axis=1))
    pl_m = np.where(np.isnan(pl), np.nanmean(pl, axis=1, keepdims=True), pl)[keep]
    tl_m = np.where(np.isnan(tl), np.nanmean(tl, axis=1, keepdims=True), tl)[keep]
    kept = [nm for nm, k in zip(names, keep) if k]
    stats = transfer.rank_transfer(pl_m, tl_m, boot=args.boot)
    stats.update(names=kept, proxy_params=n_p, target_params=n_t, proxy_seconds=s_p,
                 target_seconds=s_t, seconds=time.perf_counter() - t0, smoke=args.smoke)
    (out / "results.json").write_text(json.dumps(stats, indent=2) + "\n")
    md = markdown(kept, stats, n_p, n_t, args)
    (out / "results.md").write_text(md)
    print(md)
    print(f"{out / 'results.md'} ({stats['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
