"""The Data Mixing Agent against the uniform mixture on mixpile-tiny, same budget and seeds.

    PYTHONPATH=. python experiments/agent_vs_uniform.py \\
        --policy runs/search_tiny_agent/agent.json --seeds 1,2,3 --out runs/agent_vs_uniform

Both arms train configs/search_tiny_agent.py (the proxies' model and steps) on seeds S
(``train.seed = data.seed = S``; the proxies that produced the policy used the swarm's
seeds ``proxy_seed(0, p)``); the agent arm sets ``mixing.name=agent`` with the policy, the
uniform arm ``mixing.name=uniform``. Reported: the final validation loss averaged over the
domains (the policy's reward target) and the worst domain's, per seed, and the paired 95%
t-interval of agent - uniform (mixjax.compare.stats.paired_interval; < 0: agent better).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np


def run_arm(name: str, seed: int, policy: str, out: pathlib.Path) -> dict:
    from mixjax import config as config_lib
    from mixjax.train import loop
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    run_dir = out / name / f"seed{seed}"
    sets = [f"train.seed={seed}", f"data.seed={seed}", f"train.run_dir={run_dir}",
            "train.progress=False"]
    if name == "agent":
        sets += ["mixing.name=agent", f"mixing.hparams.policy={policy}"]
    else:
        sets += ["mixing.name=uniform"]
    cfg = config_lib.load("configs/search_tiny_agent.py", sets)
    res = loop.train(cfg)
    ev = res.final_eval
    losses = {k[5:]: v for k, v in ev.items() if k.startswith("loss/")}
    return {"avg": float(ev["loss_avg"]), "worst": float(max(losses.values())),
            "per_domain": losses}


def main(argv=None) -> int:
    from mixjax.compare.stats import paired_interval
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--out", default="runs/agent_vs_uniform")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = pathlib.Path(args.out)
    rec = {arm: {s: run_arm(arm, s, args.policy, out) for s in seeds}
           for arm in ("agent", "uniform")}
    summary = {}
    for metric in ("avg", "worst"):
        a = [rec["agent"][s][metric] for s in seeds]
        u = [rec["uniform"][s][metric] for s in seeds]
        iv = paired_interval(a, u)
        summary[metric] = {"agent": a, "uniform": u, "mean_diff": iv.mean,
                           "interval95": [iv.low, iv.high]}
        print(f"{metric}: agent {np.mean(a):.4f} uniform {np.mean(u):.4f}  "
              f"agent-uniform {iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}] (n={len(seeds)})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "runs": {
        arm: {str(s): v for s, v in r.items()} for arm, r in rec.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
