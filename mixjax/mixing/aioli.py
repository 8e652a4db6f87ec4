"""Aioli: online estimation of the mixing law during training.

Chen, Hu, Roberts, Fu, Hooper, Sala, Ré, Lu. "Aioli: A Unified Optimization
Framework for Language Model Data Mixing" (ICLR 2025, arXiv 2411.05735);
reference code ``HazyResearch/aioli: trainer/aioli_trainer.py``
(``learn_params_subroutine``, ``train``) and ``main.py`` (arguments).

Run layout (K domains, U = ``update_steps``, l = ``lp_steps``, R =
``lp_rounds``, P = R K l probe steps per round, T0 = ``prior_steps``)::

    steps [0, T0)                         the prior mixture (``prior``; uniform if None)
    round r: steps [T0 + rU, T0 + (r+1)U)
        LearnParams: R random permutations of the K groups, concatenated; for
        the q-th group j: l real training steps on the skewed mixture
        W_j = f e_j + (1 - f)/(K - 1) (1 - e_j)          (f = ``one_hot_factor``)
        then a validation evaluation L^(q);   M[:, j] += L^(q-1) - L^(q)
        (L^(0) = the evaluation at the round start; the drops chain)
        M <- M / R
        A  = M W^{-1} (row i: W a = M[i]) if f != 1; A_ii = M_ii / f (``diagonal``); A = M if f = 1
        normalise (``normalize_A``): A <- A - min(A) if min(A) < 0;  A <- A / sum(A)
        EMA (``ema`` = beta):  Abar = A (r = 0), (1 - beta) A + beta Abar;  p = exp(eta 1^T Abar)
        no EMA:               p = exp(eta 1^T A) (r = 0),  p <- p * exp(eta 1^T A)
        the remaining U - P steps train on p / sum(p)

Probe steps are real training steps (same optimiser and learning-rate
schedule; they count towards ``train.steps``). The permutations come from
``fold_in(PRNGKey(seed), round)``, every quantity lives in the mixer state or is
a function of the step, and the validation losses reach the step through
``eval_loss`` at the steps the mixer asks for (``wants_eval``), so a run
resumes exactly and never recompiles.

Timing: the evaluation that ends a round's LearnParams (after step T0 + rU + P)
is read by the update inside the next step, so the first batch after the
probes still trains on the previous round's p (the initial p is uniform) and
the new p applies one batch later than in the reference. The reference's main
phase draws ``update_steps * batch_size - lp_duration`` *sequences* (mixing
sequences and steps); here a round is exactly U steps of which P are probes, as
the paper describes. Its ``aioli_prior`` only sets the static warm-up; the base
of the exponent is uniform afterwards, as here.

Defaults are the reference's argument defaults (lp_rounds 1, lp_steps 5,
one_hot_factor 1, no EMA, normalize_A off); ``eta`` and ``update_steps`` have
no reference default (the shipped 3-domain script: eta 0.1, update_steps 250,
prior_steps 250, one_hot_factor 0.5, lp_rounds 4, lp_steps 6, ema 0.5,
normalize_A on).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.mixing.base import Mixer, init_state, record_weights, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Aioli(Mixer):
    name = "aioli"
    requires = frozenset({"eval_loss"})
    default_apply_to = "sampling"

    eta: float = 0.1
    update_steps: int = 250
    lp_rounds: int = 1
    lp_steps: int = 5
    one_hot_factor: float = 1.0
    diagonal: bool = False
    normalize_A: bool = False
    ema: float | None = None
    prior: Mapping[str, float] | None = None
    prior_steps: int = 0
    seed: int = 0
    domains: tuple[str, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        for key in ("update_steps", "lp_rounds", "lp_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"mixer 'aioli': {key} must be >= 1, got {getattr(self, key)}")
        if self.prior_steps < 0:
            raise ValueError(f"mixer 'aioli': prior_steps must be >= 0, got {self.prior_steps}")
        if not 0 < self.one_hot_factor <= 1:
            raise ValueError(f"mixer 'aioli': one_hot_factor must be in (0, 1], "
                             f"got {self.one_hot_factor}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"mixer 'aioli': ema must be in [0, 1) or None, got {self.ema}")
        if not self.eta >= 0:
            raise ValueError(f"mixer 'aioli': eta must be >= 0, got {self.eta}")
        if self.prior is not None and self.prior_steps == 0:
            raise ValueError("mixer 'aioli': a prior mixture needs prior_steps > 0")
        if self.domains is not None:
            self._check(len(self.domains))

    def __hash__(self):
        return id(self)

    def probe_steps(self, k: int) -> int:
        return self.lp_rounds * k * self.lp_steps

    def _check(self, k: int) -> None:
        if k < 2:
            raise ValueError("mixer 'aioli' needs at least 2 domains")
        p = self.probe_steps(k)
        if p >= self.update_steps:
            raise ValueError(
                f"mixer 'aioli': the probe budget lp_rounds * K * lp_steps = "
                f"{self.lp_rounds} * {k} * {self.lp_steps} = {p} steps does not fit in a round "
                f"of update_steps = {self.update_steps} (it must be smaller)")
        if self.one_hot_factor == 1.0 / k and not self.diagonal:
            raise ValueError(f"mixer 'aioli': one_hot_factor 1/K = {self.one_hot_factor} makes "
                             "every probe mixture uniform (W is singular)")
        self.prior_vector(k)

    def prior_vector(self, k: int) -> np.ndarray:
        if self.prior is None:
            return np.full(k, 1.0 / k)
        from mixjax.mixing.schedules import mixture_vector
        if self.domains is None:
            raise ValueError("mixer 'aioli': a prior {domain: weight} needs the domain names")
        return mixture_vector(self.prior, self.domains, "mixer 'aioli': prior")

    # -- the schedule ---------------------------------------------------------------------
    def probe_mixtures(self, k: int) -> jax.Array:
        """f32[K, K]: row j = W_j."""
        f = self.one_hot_factor
        eye = jnp.eye(k, dtype=jnp.float32)
        return f * eye + (1.0 - f) / (k - 1) * (1.0 - eye)

    def order(self, k: int, rnd) -> jax.Array:
        """i32[R K]: the groups probed in round ``rnd`` (R permutations, concatenated)."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), rnd)
        keys = jax.random.split(key, self.lp_rounds)
        return jax.vmap(lambda kk: jax.random.permutation(kk, k))(keys).reshape(-1)

    def wants_eval(self, done) -> bool:
        """Evaluate after ``done`` steps: each round's start and after each probe."""
        o = (done - self.prior_steps) % self.update_steps
        return (done >= self.prior_steps) & (o % self.lp_steps == 0) & (
            o <= self.lp_steps * self.lp_rounds * self._k_for_eval)

    @property
    def _k_for_eval(self) -> int:
        if self.domains is None:
            raise ValueError("mixer 'aioli' needs the domain names (mixing.build)")
        return len(self.domains)

    def batch_weights(self, state, n) -> jax.Array:
        """The mixture batch ``n`` is drawn with."""
        k = state["weights"].shape[0]
        rel = n - self.prior_steps
        o = jnp.maximum(rel, 0) % self.update_steps
        rnd = jnp.maximum(rel, 0) // self.update_steps
        probing = (rel >= 0) & (o < self.probe_steps(k))
        group = self.order(k, rnd)[jnp.clip(o // self.lp_steps, 0, self.probe_steps(k)
                                             // self.lp_steps - 1)]
        probe = self.probe_mixtures(k)[group]
        p = jax.nn.softmax(state["log_p"])
        prior = jnp.asarray(self.prior_vector(k), jnp.float32)
        return jnp.where(rel < 0, prior, jnp.where(probing, probe, p))

    # -- protocol -------------------------------------------------------------------------
    def init(self, num_domains: int):
        self._check(num_domains)
        k = num_domains
        extra = {"log_p": jnp.zeros((k,), jnp.float32), "prev_loss": jnp.zeros((k,), jnp.float32),
                 "drops": jnp.zeros((k, k), jnp.float32),
                 "ema_graph": jnp.zeros((k, k), jnp.float32),
                 "graph": jnp.zeros((k, k), jnp.float32), "rounds": jnp.zeros((), jnp.int32)}
        w0 = self.batch_weights({"weights": jnp.zeros((k,), jnp.float32), **extra}, jnp.int32(0))
        return init_state(w0, count_initial=self.average_includes_initial, **extra)

    def _graph(self, drops: jax.Array) -> jax.Array:
        k = drops.shape[0]
        m = drops / self.lp_rounds
        f = self.one_hot_factor
        if f != 1.0 and self.diagonal:
            return jnp.diag(jnp.diagonal(m) / f)
        if f != 1.0:
            # A[i] solves W a = M[i]: A^T = W^{-1} M^T
            return jnp.linalg.solve(self.probe_mixtures(k), m.T).T
        return m

    def update(self, state, stats, step):
        k = state["weights"].shape[0]
        loss = stats["eval_loss"]
        rel = step - self.prior_steps
        o = jnp.maximum(rel, 0) % self.update_steps
        rnd = jnp.maximum(rel, 0) // self.update_steps
        q = o // self.lp_steps
        n_probes = self.lp_rounds * k
        active = rel >= 0
        at_start = active & (o == 0)
        after_probe = active & (o % self.lp_steps == 0) & (q >= 1) & (q <= n_probes)
        # chained validation-loss drops of the probe that just ended
        group = self.order(k, rnd)[jnp.clip(q - 1, 0, n_probes - 1)]
        col = jax.nn.one_hot(group, k, dtype=jnp.float32)
        drops = jnp.where(at_start, 0.0, state["drops"])
        drops = drops + jnp.where(after_probe, 1.0, 0.0) * (
            (state["prev_loss"] - loss)[:, None] * col[None, :])
        prev_loss = jnp.where(at_start | after_probe, loss, state["prev_loss"])
        # the end of LearnParams: the graph and the exponentiated-gradient step
        finished = after_probe & (q == n_probes)
        graph = self._graph(drops)
        if self.normalize_A:
            low = jnp.min(graph)
            graph = jnp.where(low < 0, graph - low, graph)
            total = jnp.sum(graph)
            graph = graph / jnp.where(total != 0, total, 1.0)
        first = state["rounds"] == 0
        if self.ema is not None:
            ema_graph = jnp.where(first, graph, (1 - self.ema) * graph
                                  + self.ema * state["ema_graph"])
            log_p = self.eta * jnp.sum(ema_graph, axis=0)
        else:
            ema_graph = state["ema_graph"]
            log_p = jnp.where(first, 0.0, state["log_p"]) + self.eta * jnp.sum(graph, axis=0)
        new = {
            "log_p": jnp.where(finished, log_p, state["log_p"]),
            "ema_graph": jnp.where(finished, ema_graph, state["ema_graph"]),
            "graph": jnp.where(finished, graph, state["graph"]),
            "rounds": state["rounds"] + finished.astype(jnp.int32),
            "drops": drops, "prev_loss": prev_loss,
        }
        weights = self.batch_weights({**state, **new}, step + 1)
        return record_weights(state, weights, **new)
