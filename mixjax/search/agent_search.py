"""``mixjax search agent``: mixing trajectories from a proxy swarm -> an offline-trained
Data Mixing Agent policy (:mod:`mixjax.mixing.agent` for the method and its reference).

1. Trajectories: P proxies (the search config's proxy model, ``get_search()["proxies"]``),
   each with T = ``train.steps / interval`` mixtures w_0 .. w_{T-1} drawn i.i.d. from a
   symmetric Dirichlet(alpha) (uniformly random behaviour over the simplex for alpha = 1;
   :func:`mixjax.search.designs.dirichlet`), one per interval.
2. One swarm (:class:`TrajectorySwarm`: the ordinary :class:`~mixjax.search.swarm.Swarm`,
   whose proxies replay their table with :class:`~mixjax.mixing.agent.IntervalTable` on the
   ``upweight`` route: every proxy sees the same stratified batch and weights domain d's
   loss by w_k[d] / share_d in interval k) trained by the shared
   :func:`~mixjax.search.swarm.train_swarm` with ``eval_every = interval``: the per-domain
   validation losses L_1 .. L_{T-1} come from its history, L_T is its final evaluation and
   L_0 is the evaluation of the initial proxies. Changing mixtures need the loss route: the
   ``upsample`` route draws each proxy's rows with one fixed mixture.
3. Transitions, rewards and the offline objective: :mod:`mixjax.search.agent_train`
   (reward = drop of the target validation loss, ``get_search()["target"]``).
4. Files in ``--out``: ``agent.safetensors`` + ``agent.json`` (the policy, for
   ``--set mixing.name=agent --set mixing.hparams.policy=OUT/agent.json``),
   ``trajectories.npz`` (mixtures, losses, transitions), ``swarm/`` (checkpoints,
   metrics, ``result.json``, ``trajectories.npy``; the same command resumes an interrupted
   swarm and reuses a finished one, and refuses a directory of other trajectories).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from mixjax.mixing.agent import IntervalTable
from mixjax.search.swarm import Swarm, SwarmError


class TrajectorySwarm(Swarm):
    """A swarm whose proxy p trains on ``trajectories[p, k]`` during interval k."""

    def __init__(self, cfg, trajectories, *, interval: int, **kwargs):
        from mixjax import mixing
        traj = np.asarray(trajectories, np.float64)
        if traj.ndim != 3 or traj.shape[1] < 1:
            raise SwarmError(f"trajectories must be [P, T, K], got shape {traj.shape}")
        if kwargs.pop("route", "upweight") != "upweight":
            raise SwarmError("a trajectory swarm runs the upweight route (the upsample route "
                             "draws every proxy's rows with one fixed mixture)")
        if interval < 1 or traj.shape[1] * interval < cfg.train.steps:
            raise SwarmError(f"{traj.shape[1]} intervals of {interval} steps do not cover "
                             f"train.steps={cfg.train.steps}")
        self.trajectories, self.interval = traj, int(interval)
        super().__init__(cfg, traj[:, 0], route="upweight", **kwargs)
        for p, row in enumerate(traj):
            for k, h in enumerate(row):
                try:
                    mixing.check_weight_vector(h, self.domains, f"proxy {p} interval {k}")
                except ValueError as e:
                    raise SwarmError(str(e)) from None

    def proxy_mixer(self, apply_to: str):
        return IntervalTable(interval=self.interval, apply_to_override=apply_to)

    def proxy_mix_state(self, p: int, mix_state: dict) -> dict:
        return self.mixer.init_table(self.trajectories[p])


def add_parser(sub) -> None:
    a = sub.add_parser("agent", help="Data Mixing Agent: random mixing trajectories of a "
                       "proxy swarm -> an offline-trained policy (agent.safetensors/.json)")
    a.add_argument("config", help="search config (get_config(); get_search(): proxies, "
                                  "target, proxy_overrides, design_seed)")
    a.add_argument("--out", required=True, help="output dir")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the proxies")
    a.add_argument("--proxy-set", dest="proxy_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="config override for the proxies only")
    a.add_argument("--search-set", dest="search_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="search setting (proxies, target, design_seed)")
    a.add_argument("--interval", type=int, default=None,
                   help="steps between decisions (default: train.steps / 4)")
    a.add_argument("--history", type=int, default=2, help="weight vectors in the state")
    a.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration")
    a.add_argument("--hidden", type=int, default=32, help="policy hidden width")
    a.add_argument("--fit-steps", type=int, default=500, help="AdamW steps of the policy")
    a.add_argument("--temperature", type=float, default=1.0,
                   help="AWR temperature (in units of the advantages' std)")


def run_cli(args: argparse.Namespace) -> int:
    from mixjax.config import ConfigError
    from mixjax.search.settings import SearchError
    try:
        summary = run(args)
    except (SearchError, ConfigError, SwarmError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"policy: {summary['policy']}   ({summary['seconds']:.0f} s, "
          f"{summary['transitions']} transitions from {summary['trajectories']} trajectories)")
    return 0


def _check(args, proxy_cfg, settings) -> int:
    from mixjax.search.settings import SearchError
    steps = proxy_cfg.train.steps
    interval = args.interval if args.interval is not None else max(steps // 4, 1)
    if interval < 1 or steps % interval:
        raise SearchError(f"--interval {interval} must divide the proxies' train.steps "
                          f"({steps})")
    if args.history < 1:
        raise SearchError(f"--history must be >= 1, got {args.history}")
    if not args.alpha > 0:
        raise SearchError(f"--alpha must be > 0, got {args.alpha}")
    if not args.temperature > 0:
        raise SearchError(f"--temperature must be > 0, got {args.temperature}")
    if args.hidden < 1 or args.fit_steps < 1:
        raise SearchError("--hidden and --fit-steps must be >= 1")
    if settings["proxies"] < 2:
        raise SearchError(f"search setting 'proxies' must be >= 2, got {settings['proxies']}")
    return interval


def run(args: argparse.Namespace) -> dict:
    from mixjax.search import agent_train, designs, regmix, swarm
    from mixjax.search.settings import load_search_config, write_json
    from mixjax.mixing import agent_policy
    t0 = time.perf_counter()
    _, proxy, settings = load_search_config(args.config, args.overrides, args.search_overrides,
                                            args.proxy_overrides)
    interval = _check(args, proxy, settings)
    out = pathlib.Path(args.out)
    swarm.check_config(proxy)
    from mixjax.train.data import build_data
    data = build_data(proxy)
    domains = tuple(data.domains)
    k, n, t = len(domains), settings["proxies"], proxy.train.steps // interval
    traj = designs.dirichlet(n * t, k, alpha=args.alpha,
                             seed=settings["design_seed"]).reshape(n, t, k)
    sw = TrajectorySwarm(proxy, traj, interval=interval, strategy=settings["strategy"],
                         data=data)
    target = regmix.target_weights(sw.eval_domains, domains, settings["target"])
    swarm.check_memory(sw)
    out.mkdir(parents=True, exist_ok=True)
    path, traj_path = out / "swarm" / "result.json", out / "swarm" / "trajectories.npy"
    if traj_path.exists():        # a finished or interrupted swarm of the same trajectories
        old = np.load(traj_path)
        if old.shape != traj.shape or not np.allclose(old, traj):
            raise SwarmError(f"{out / 'swarm'} holds another swarm (other trajectories or "
                             "intervals); pick another --out")
    else:
        traj_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(traj_path, traj)
    l0 = sw.evaluate(sw.init_state())
    if path.exists():
        res, _, _ = swarm.load_result(path)
    else:
        res = swarm.train_swarm(sw, out / "swarm", eval_every=interval,
                                progress=proxy.train.progress, log=print)
        swarm.save_result(res, traj[:, 0], domains, path)
    grid = dict(res.history)
    missing = [s for s in range(interval, proxy.train.steps, interval) if s not in grid]
    if missing:
        raise SwarmError(f"{path}: no evaluation at steps {missing}")
    losses = np.stack([l0] + [grid[s] for s in range(interval, proxy.train.steps, interval)]
                      + [res.losses], axis=1)                     # [P, T + 1, K']
    tr = agent_train.transitions(traj, losses, target, history=args.history,
                                 num_domains=k, alive=res.alive)
    fit = agent_train.train(tr, history=args.history, hidden=args.hidden,
                            steps=args.fit_steps, temperature=args.temperature)
    meta = {"domains": list(domains), "history": args.history, "hidden": args.hidden,
            "interval": interval, "proxy_steps": proxy.train.steps,
            "target": settings["target"], "trajectories": int(res.alive.sum()),
            "transitions": len(tr.g), "algorithm": "advantage-weighted behaviour cloning",
            "temperature": args.temperature, "fit_steps": args.fit_steps,
            "fit_loss_first_last": [float(fit["loss"][0]), float(fit["loss"][-1])],
            "alpha": args.alpha, "design_seed": settings["design_seed"]}
    wpath, jpath = agent_policy.save(out / "agent", fit["params"], fit["mean"], fit["std"],
                                     meta)
    np.savez(out / "trajectories.npz", mixtures=traj, losses=losses, target=target,
             x=tr.x, a=tr.a, r=tr.r, g=tr.g, proxy=tr.proxy, advantage=fit["advantage"],
             awr_weights=fit["weights"])
    final = losses[:, -1] @ target
    summary = {"policy": str(jpath), "weights_file": str(wpath),
               "trajectories": int(res.alive.sum()), "transitions": len(tr.g),
               "final_target_loss": {"min": float(np.nanmin(final)),
                                     "mean": float(np.nanmean(final)),
                                     "max": float(np.nanmax(final))},
               "seconds": time.perf_counter() - t0}
    write_json(out / "summary.json", summary)
    print(json.dumps(summary["final_target_loss"]))
    return summary
