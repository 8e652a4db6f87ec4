"""The worked example of docs/extending.md: a new statistic, a mixer that reads it, and a
new kind of step with its own state. ``tests/test_extending_example.py`` runs this file.

Importing it registers everything; then ``--set mixing.name=spread`` and
``--set train.objective=ema`` select them (from the command line:
``mixjax train CONFIG --plugin docs.extending_example ...``, or a ``mixjax.plugins`` entry
point; from Python: import the module in your own launcher; docs/extending.md, section 8).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.mixing import domain_stats, statistics
from mixjax import methods

# 1. A statistic, declared once: the per-domain variance of the token loss,
#    Var_d = E_d[l^2] - (E_d[l])^2 over the counted tokens of domain d's sequences.
statistics.declare(
    "loss_spread", shape="f32[K]", attribution="domain", needs={"forward"},
    doc="per-domain variance of the token loss in this batch (0 where absent)",
    compute=lambda ctx: jnp.maximum(
        domain_stats.domain_mean(ctx.token_loss ** 2, ctx.token_mask, ctx.domain_id,
                                 ctx.num_domains)[0] - ctx.domain_loss ** 2, 0.0))


# 2. A mixer that reads it: w' = normalise(w * exp(eta * Var_d)) for the domains present.
@mixing.register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Spread(mixing.Mixer):
    name = "spread"
    requires = frozenset({"loss_spread", "count"})

    eta: float = 0.5

    def update(self, state, stats, step):
        del step
        present = stats["count"] > 0
        logits = jnp.log(state["weights"]) + jnp.where(present, self.eta * stats["loss_spread"],
                                                       0.0)
        return mixing.record_weights(state, jax.nn.softmax(logits))


# 3. A new Method: the default mixer step plus an exponential moving average of the
#    parameters, kept in the state's method-owned ``extra`` (sharded like the params because
#    it has their structure, checkpointed and resumed with the rest of the state).
@methods.register
class EMA(methods.Method):
    name = "ema"
    hparams = {"decay": 0.9}
    uses_mixer = True                     # the mixing section still picks the weights

    def check(self, hp):
        if not 0.0 <= hp["decay"] < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {hp['decay']}")

    def build(self, ctx, hp):
        parts = methods.get("mixer").build(ctx, {})     # reuse the default step
        decay = float(hp["decay"])

        def init_fn(params):
            state = parts.init_fn(params)
            return state.replace(extra={"ema_params": jax.tree.map(jnp.copy, state.params)})

        def step_fn(state, batch, frozen=None):
            new, metrics = parts.step_fn(state, batch, frozen)
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                               state.extra["ema_params"], new.params)
            gap = optax.tree.norm(jax.tree.map(jnp.subtract, ema, new.params))
            return new.replace(extra={"ema_params": ema}), {**metrics, "extra": {"ema_gap": gap}}

        return dataclasses.replace(parts, step_fn=step_fn, init_fn=init_fn)
