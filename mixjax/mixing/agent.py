"""Data Mixing Agent: a learned policy maps the mixing history and evaluation feedback
to the next domain weights, every ``interval`` steps.

Yang, Liu, Ji, Li, Gong, Cheng, Yang. "Data Mixing Agent: Learning to Re-weight Domains
for Continual Pre-training", arXiv 2507.15640 (ACL 2026). No code is published; the paper
text available to us was the abstract and a third-party summary: a small model maps the state (history of domain weights +
evaluation feedback) to the next domain weights; it is trained by offline RL (CQL, per a
summary; unverified) on many randomly sampled mixing trajectories of proxy runs with an
evaluation environment as reward, and queried every interval at use time. Agent size,
interval and reward are not given there. Our choices, stated plainly:

* Agent: a flax nnx MLP (two tanh hidden layers) over standardised state features, with
  a softmax head (:mod:`mixjax.mixing.agent_policy`); it outputs the weights directly
  (a deterministic policy), not action values.
* State: the last H weight vectors (uniform before the first decision), the per-domain
  validation losses now, their drop since the previous decision, and the fraction of the
  run done (:func:`~mixjax.mixing.agent_policy.features`). The evaluation feedback is the
  validation loss of the training domains (``eval_loss``), not benchmark accuracy.
* Reward, trajectories and training: :mod:`mixjax.search.agent_search` (proxy swarm
  runs whose mixture changes every interval; reward = drop of the target validation loss
  over the interval; advantage-weighted behaviour cloning instead of CQL).

Use (this mixer, ``mixing.name = "agent"``): the policy file from ``mixjax search
agent`` is ``mixing.hparams.policy``. A decision is made in the update of step ``s`` when
``s % interval == 0`` (``s`` = steps done; the loop evaluates the validation sets after
every such ``s`` through ``wants_eval``, and at step 0 because the mixer requires
``eval_loss``)::

    x = features(hist, L_s, L_prev, has_prev, s / S)
    w = (1 - smoothing) * policy(x) + smoothing / K
    hist <- [hist[1:], w];  L_prev <- L_s

Between decisions the weights are kept. ``apply_to`` defaults to ``loss``, the route the
trajectories were trained on (the swarm's ``upweight``: in step ``s`` the loss of domain d
is weighted by ``w_d / p_d``, so the decision at ``s`` already weights batch ``s``);
``mixing.apply_to=sampling`` draws the data with ``w`` instead (one batch later, the
sampler's lag), as the paper does.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mixjax.mixing import agent_policy
from mixjax.mixing.base import Mixer, init_state, record_weights, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Agent(Mixer):
    name = "agent"
    requires = frozenset({"eval_loss"})
    default_apply_to = "loss"

    policy: str | None = None          # the policy file (.safetensors or .json, or the stem)
    interval: int | None = None        # steps between decisions (default: the policy's)
    smoothing: float = 0.0             # mix the policy's weights with uniform
    domains: tuple[str, ...] | None = None
    total_steps: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.policy is None:
            raise ValueError("mixer 'agent': mixing.hparams.policy is not set (the policy "
                             "file written by `mixjax search agent`)")
        try:
            pol = agent_policy.load(self.policy)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"mixer 'agent': mixing.hparams.policy: {e}") from None
        if self.domains is not None and tuple(self.domains) != pol.domains:
            raise ValueError(
                f"mixer 'agent': mixing.hparams.policy: {self.policy!r} was trained on "
                f"{len(pol.domains)} domains {list(pol.domains)}, the run has "
                f"{len(self.domains)} domains {list(self.domains)}")
        interval = self.interval if self.interval is not None else pol.meta.get("interval")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"mixer 'agent': mixing.hparams.interval must be an integer "
                             f">= 1, got {interval!r}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"mixer 'agent': mixing.hparams.smoothing must be in [0, 1], "
                             f"got {self.smoothing}")
        object.__setattr__(self, "_policy", pol)
        object.__setattr__(self, "_interval", interval)

    @property
    def every(self) -> int:
        return self._interval

    def wants_eval(self, done) -> bool:
        return (done > 0) & (done % self._interval == 0)

    def init(self, num_domains):
        if num_domains != len(self._policy.domains):
            raise ValueError(f"mixer 'agent': mixing.hparams.policy: the policy has "
                             f"{len(self._policy.domains)} domains, the run {num_domains}")
        u = jnp.full((num_domains,), 1.0 / num_domains, jnp.float32)
        return init_state(u, hist=jnp.tile(u, (self._policy.history, 1)),
                          prev_loss=jnp.zeros((num_domains,), jnp.float32),
                          decisions=jnp.zeros((), jnp.int32))

    def decide(self, state, eval_loss, step):
        """``(w, features)`` of a decision after ``step`` steps (module docstring)."""
        k = eval_loss.shape[0]
        total = self.total_steps or 1
        x = agent_policy.features(state["hist"], eval_loss, state["prev_loss"],
                                  state["decisions"] > 0, step / total)
        w = (1.0 - self.smoothing) * self._policy.weights(x) + self.smoothing / k
        return w, x

    def update(self, state, stats, step):
        loss = stats["eval_loss"].astype(jnp.float32)
        due = step % self._interval == 0
        w, _ = self.decide(state, loss, step)
        w = jnp.where(due, w, state["weights"])
        hist = jnp.where(due, jnp.concatenate([state["hist"][1:], w[None]], axis=0),
                         state["hist"])
        return record_weights(state, w, hist=hist,
                              prev_loss=jnp.where(due, loss, state["prev_loss"]),
                              decisions=state["decisions"] + due.astype(jnp.int32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntervalTable(Mixer):
    """Replays one mixture per interval: ``w(s) = table[min(s // interval, T - 1)]`` in the
    update of step ``s`` (so, with ``apply_to="loss"``, batch ``s`` is weighted by it).
    The table f32[T, K] lives in the state (one per proxy in a swarm), not in the
    hyperparameters; the proxy swarm of ``mixjax search agent`` uses it. Not registered:
    a run replays a fixed schedule with ``staged``."""

    name = "interval_table"
    interval: int = 1

    def init_table(self, table):
        table = jnp.asarray(table, jnp.float32)
        return init_state(table[0], table=table)

    def init(self, num_domains):
        return self.init_table(jnp.full((1, num_domains), 1.0 / num_domains, jnp.float32))

    def update(self, state, stats, step):
        del stats
        t = state["table"]
        idx = jnp.minimum(step // self.interval, t.shape[0] - 1)
        return record_weights(state, t[idx])
