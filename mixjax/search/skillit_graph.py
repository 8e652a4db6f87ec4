"""Skill-it's skills graph estimated from a swarm of one-hot proxies.

Skill-it (Chen et al., NeurIPS 2023, arXiv 2307.14430, Sec. 3 / App. C) estimates
the graph A by training on each skill alone and measuring the change of every
skill's validation loss. The graph-learning code is not in ``HazyResearch/skill-it``;
the rule used for the Aioli paper's Skill-it baselines is
``HazyResearch/aioli: mixing_law_fitting.py`` (``skills_graph``): for the run
trained on the one-hot mixture of domain i for T steps,

    A_ij = (L_j(0) - L_j(T)) / L_j(0)

row i = the trained domain, column j = the evaluated domain, L_j(0) the loss
before training, both on domain j's validation split (the same rule as
:func:`mixjax.mixing.skillit.graph_from_runs`, which reads K separate run
directories). Here the K one-hot runs are the K proxies of one swarm
(:mod:`mixjax.search.swarm`, one compiled step for all of them); L(0) is each
proxy's evaluation before its first step (the proxies have different seeds,
hence different initial models).

Deviation: the reference keeps negative entries (a domain whose training raised
another's loss); :class:`mixjax.mixing.skillit.SkillIt` needs A >= 0, so
``clip_negative`` (default) sets them to 0 and the count is reported.

Output: ``graph.npy`` (float64 [K, K], what ``mixing.hparams.graph`` reads) and
``graph.json`` next to it (domains, A before clipping, L(0), L(T), steps).

Command: ``mixjax search skillit-graph CONFIG --out graph.npy [--set KEY=VALUE]``
(the config's model, optimiser, data and ``train.steps`` are the proxies').
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Sequence

import numpy as np


def graph_from_losses(initial: np.ndarray, final: np.ndarray,
                      mixtures: np.ndarray) -> np.ndarray:
    """A [K, K] from one-hot proxies: row i from the proxy trained on domain i alone.

    ``initial``/``final``: float[P, K'] validation losses before/after training
    (the first K columns are the training domains, in mixture order); ``mixtures``:
    float[P, K], each row one-hot. Several proxies of the same domain (seeds) average.
    """
    mixtures = np.asarray(mixtures, np.float64)
    p, k = mixtures.shape
    onehot = np.isclose(mixtures.max(axis=1), 1.0) & np.isclose(mixtures.sum(axis=1), 1.0)
    if not onehot.all():
        raise ValueError(f"skills graph: proxy {int(np.argmin(onehot))} is not one-hot "
                         f"({mixtures[int(np.argmin(onehot))].round(3).tolist()})")
    owner = mixtures.argmax(axis=1)
    missing = sorted(set(range(k)) - set(owner.tolist()))
    if missing:
        raise ValueError(f"skills graph: no proxy trained on domain(s) #{missing} alone")
    l0 = np.asarray(initial, np.float64)[:, :k]
    lt = np.asarray(final, np.float64)[:, :k]
    rows = (l0 - lt) / l0
    return np.stack([rows[owner == i].mean(axis=0) for i in range(k)])


def estimate(cfg, out: str | pathlib.Path, *, seeds: int = 1, data=None,
             strategy: str = "auto", clip_negative: bool = True,
             log: Callable[[str], None] = print) -> np.ndarray:
    """Trains K x ``seeds`` one-hot proxies of ``cfg`` in one swarm; writes the graph.

    ``out``: the ``.npy`` path (its ``.json`` twin gets the details; the swarm's
    checkpoints go to ``<out stem>_swarm/``, so a stopped estimate resumes).
    """
    from mixjax.search import swarm as swarm_lib
    from mixjax.train.data import build_data
    out = pathlib.Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"skills graph: --out must name a .npy file, got {str(out)!r}")
    if seeds < 1:
        raise ValueError(f"skills graph: seeds must be >= 1, got {seeds}")
    swarm_lib.check_config(cfg)
    data = data if data is not None else build_data(cfg)
    domains: Sequence[str] = tuple(data.domains)
    k = len(domains)
    mixtures = np.tile(np.eye(k), (seeds, 1))
    sw = swarm_lib.Swarm(cfg, mixtures, route="upsample", strategy=strategy, data=data)
    initial = sw.evaluate(sw.init_state())
    log(f"skills graph: {len(mixtures)} one-hot proxies x {cfg.train.steps} steps "
        f"({sw.params_per_proxy} params each)")
    res = swarm_lib.train_swarm(sw, out.parent / f"{out.stem}_swarm", eval_every=0)
    if not res.alive.all():
        dead = [domains[i % k] for i in np.flatnonzero(~res.alive)]
        raise ValueError(f"skills graph: the one-hot proxies of {dead} diverged; lower "
                         f"optim.lr or train.steps")
    raw = graph_from_losses(initial, res.losses, mixtures)
    graph = np.maximum(raw, 0.0) if clip_negative else raw
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, graph)
    out.with_suffix(".json").write_text(json.dumps({
        "domains": list(domains), "graph": graph.tolist(), "raw": raw.tolist(),
        "clipped_negative": int((raw < 0).sum()) if clip_negative else 0,
        "initial_loss": initial[:, :k].tolist(), "final_loss": res.losses[:, :k].tolist(),
        "steps": res.steps, "seeds": seeds, "rule": "A_ij = (L_j(0) - L_j(T)) / L_j(0)"},
        indent=1) + "\n")
    if clip_negative and (raw < 0).any():
        log(f"skills graph: {int((raw < 0).sum())} negative entries set to 0 "
            f"(min {raw.min():.4f})")
    return graph
