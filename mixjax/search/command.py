"""``mixjax search``: the command's parser and dispatch over its routes: regmix and law
(:mod:`~mixjax.search.pipeline`), skillit-graph (:mod:`~mixjax.search.skillit_graph`),
domain2vec (:mod:`~mixjax.search.domain2vec`), agent (:mod:`~mixjax.search.agent_search`),
dcpt and sft (:mod:`~mixjax.search.cpt_search`). Every route reports bad input in one
``error:`` line with exit status 2 before anything trains."""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from mixjax.search import cpt_search
from mixjax.search.pipeline import run_search
from mixjax.search.settings import DEFAULTS, METHODS, SearchError, load_search_config


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    from mixjax.search import agent_search
    sub = _add_swarm_routes(parser)
    cpt_search.add_parsers(sub)
    agent_search.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    if args.method in ("dcpt", "sft"):
        return cpt_search.run(args)
    if args.method == "skillit-graph":
        return _run_skillit_graph(args)
    if args.method == "agent":
        from mixjax.search import agent_search
        return agent_search.run_cli(args)
    if args.method == "domain2vec":
        from mixjax.search import domain2vec
        return domain2vec.run_cli(args)
    return _run_swarm_route(args)


def _add_swarm_routes(parser: argparse.ArgumentParser):
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


def _run_swarm_route(args: argparse.Namespace) -> int:
    from mixjax.config import ConfigError
    from mixjax.search.designs import DesignError
    from mixjax.search.regmix import FitError
    from mixjax.search.swarm import SwarmError
    from mixjax.train.loop import RunDirError
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
