"""Skill-it: online multiplicative weights over a skills graph.

Chen, Roberts, Bhatia, Wang, Zhang, Sala, Ré. "Skill-it! A Data-Driven Skills
Framework for Understanding and Training Language Models" (NeurIPS 2023, arXiv
2307.14430), Alg. 1 (online data selection); reference code
``HazyResearch/aioli: trainer/skillit_trainer.py`` (the online update) and
``mixing_law_fitting.py`` (the graph from one-hot runs), as re-implemented for
the Aioli paper's baselines, and ``HazyResearch/skill-it``.

With A the K x K skills graph (row i = the trained skill, A_ij = how much
training on i helps j), eta the step size, T the round length
(``update_steps``) and L^(e) the per-domain validation losses of the
evaluations made so far (after steps 1, 1 + E, 1 + 2E, ...: the reference
evaluates when its 0-based ``counter % ckpt_steps == 0``, after that step;
E = ``eval_every``)::

    p_0    ∝ exp(eta * A 1)
    p_r    ∝ exp(eta * A sum_{the last `window` evaluations e} L^(e))   after r*T steps

Not cumulative: each round recomputes p from the last ``window`` evaluations
(the reference's ``skillit_window``, 3; a negative window is rejected, 0 gives
the uniform mixture, as in the reference). The loop evaluates at those steps on
demand (``wants_eval``), independent of ``train.eval_every``.

Graph (``graph``):

* ``"identity"`` -- A = I (no graph; p ∝ exp(eta L), the reference's default);
* a K x K nested list, or a path to a ``.npy`` / ``.json`` file holding one;
* ``"runs"`` with ``graph_runs`` = one run directory per domain (domain order),
  each trained on that domain only: A_ij = (L_j(0) - L_j(T)) / L_j(0) from the
  first and last rows of its ``eval.jsonl`` (``mixing_law_fitting.py``).
* the same estimate from one swarm of K one-hot proxies:
  ``mixjax search skillit-graph CONFIG --out graph.npy``
  (:mod:`mixjax.search.skillit_graph`), then ``graph = "graph.npy"``.

In every given graph an off-diagonal entry equal to 1 becomes 0.5, as the
reference's trainer does when it loads ``graph_path``.

Entries must be finite and >= 0 (a one-hot run that *raised* another domain's
loss gives a negative estimate: clip it with ``clip_negative=True``).

Timing: the evaluation after step s (s = r * T) is read by the update inside
step s + 1, whose new p applies from the next batch, so each round's mixture
starts one batch later than in the reference (which evaluates between steps
of one process). Defaults are the shipped script's: eta 0.2, update_steps 500,
window 3; ``eval_every`` = None uses ``update_steps`` (the reference's
``ckpt_steps`` of the shipped runs is not confirmed).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register


def graph_from_runs(run_dirs: Sequence[str], domains: Sequence[str]) -> np.ndarray:
    """A_ij = (L_j(0) - L_j(T)) / L_j(0) of the run trained only on domain i."""
    if len(run_dirs) != len(domains):
        raise ValueError(f"mixer 'skillit': graph_runs needs one run per domain "
                         f"({len(domains)}: {list(domains)}), got {len(run_dirs)}")
    a = np.zeros((len(domains), len(domains)))
    for i, run in enumerate(run_dirs):
        path = pathlib.Path(run) / "eval.jsonl"
        if not path.exists():
            raise ValueError(f"mixer 'skillit': graph_runs[{i}] ({domains[i]!r}): no {path}")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) < 2:
            raise ValueError(f"mixer 'skillit': {path} needs a first and a last evaluation")
        for j, d in enumerate(domains):
            key = f"loss/{d}"
            if key not in rows[0] or key not in rows[-1]:
                raise ValueError(f"mixer 'skillit': {path} has no {key!r}")
            a[i, j] = (rows[0][key] - rows[-1][key]) / rows[0][key]
    return a


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class SkillIt(Mixer):
    name = "skillit"
    requires = frozenset({"eval_loss"})
    default_apply_to = "sampling"

    eta: float = 0.2
    update_steps: int = 500
    window: int = 3
    eval_every: int | None = None
    graph: Any = "identity"
    graph_runs: tuple[str, ...] | None = None
    clip_negative: bool = False
    domains: tuple[str, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.window < 0:
            raise ValueError(f"mixer 'skillit': window must be >= 0 (the reference has no "
                             f"negative window), got {self.window}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"mixer 'skillit': eval_every must be >= 1, got {self.eval_every}")
        if self.update_steps < 1:
            raise ValueError(f"mixer 'skillit': update_steps must be >= 1, "
                             f"got {self.update_steps}")
        if not self.eta >= 0:
            raise ValueError(f"mixer 'skillit': eta must be >= 0, got {self.eta}")
        if self.domains is not None:
            self.graph_matrix(len(self.domains))

    def __hash__(self):
        return id(self)

    def graph_matrix(self, k: int) -> np.ndarray:
        """The checked K x K graph (f64)."""
        g = self.graph
        if isinstance(g, str) and g == "identity":
            a = np.eye(k)
        elif isinstance(g, str) and g == "runs":
            if not self.graph_runs or self.domains is None:
                raise ValueError("mixer 'skillit': graph='runs' needs graph_runs (one run "
                                 "directory per domain)")
            runs = self.graph_runs
            if isinstance(runs, str):   # a command-line list: "[runs/a,runs/b]" or "runs/a,runs/b"
                runs = [r.strip() for r in runs.strip().strip("[]").split(",") if r.strip()]
            a = graph_from_runs(runs, self.domains)
        elif isinstance(g, (str, pathlib.Path)):
            path = pathlib.Path(g)
            if not path.exists():
                raise ValueError(f"mixer 'skillit': graph file {path} does not exist")
            a = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(
                path.read_text()), np.float64)
        else:
            a = np.asarray(g, np.float64)
        a = np.array(a, np.float64)
        if a.shape == (k, k) and not (isinstance(g, str) and g == "identity"):
            # the reference's loader: binary graphs' off-diagonal 1s count half
            a[~np.eye(k, dtype=bool) & (a == 1.0)] = 0.5
        if a.shape != (k, k):
            raise ValueError(f"mixer 'skillit': graph must be {k} x {k} (one row and column "
                             f"per domain), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            i, j = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"mixer 'skillit': graph[{i}][{j}] is not finite ({a[i, j]})")
        if self.clip_negative:
            a = np.maximum(a, 0.0)
        if np.any(a < 0):
            i, j = np.argwhere(a < 0)[0]
            raise ValueError(f"mixer 'skillit': graph[{i}][{j}] = {a[i, j]} is negative "
                             "(set clip_negative=True to clip estimates to 0)")
        return a

    @property
    def eval_period(self) -> int:
        return self.eval_every or self.update_steps

    def wants_eval(self, done) -> bool:
        """Evaluate after ``done`` steps (host int or traced step)."""
        return (done > 0) & ((done - 1) % self.eval_period == 0)

    def init(self, num_domains: int):
        a = jnp.asarray(self.graph_matrix(num_domains), jnp.float32)
        w = jax.nn.softmax(self.eta * a @ jnp.ones((num_domains,), jnp.float32))
        return init_state(w, history=jnp.zeros((max(self.window, 1), num_domains),
                                                jnp.float32))

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        a = jnp.asarray(self.graph_matrix(k), jnp.float32)
        # `step` steps are done; an evaluation after them is in eval_loss when wanted
        fresh = self.wants_eval(step)
        pushed = jnp.concatenate([state["history"][1:], stats["eval_loss"][None]], axis=0)
        history = jnp.where(fresh, pushed, state["history"])
        total = jnp.sum(history, axis=0) if self.window > 0 else jnp.zeros((k,), jnp.float32)
        p = jax.nn.softmax(self.eta * a @ total)
        new_round = (step > 0) & (step % self.update_steps == 0)
        return record_weights(state, jnp.where(new_round, p, state["weights"]),
                              history=history)
