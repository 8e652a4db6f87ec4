"""DreamPRM-1.5 instance weights, learned by the bilevel engine of ``methods.bilevel``.

Cao and Xie, "DreamPRM-1.5: Unlocking the Potential of Each Instance for Multimodal Process
Reward Model Training", arXiv 2509.05542; reference code ``coder-qicao/DreamPRM-1.5`` at commit
a60efd2 (``model.py`` lines 217-258 ``InstanceTable``, 265-307 ``InstanceNet``; ``main_table.py``
lines 145-160 and 196-207, the upper problem's AdamW and the lower loss ``weight * loss``;
``main_net.py`` lines 196-202; ``run_table.sh`` / ``run_net.sh`` for the hyperparameters).

Every training example b gets a weight s_b >= 0 and the lower level minimises the weighted loss
``L2(theta, p) = (1/B) sum_b s_b(p) l_b(theta)`` (l_b = sequence b's mean token loss; the
reference multiplies each example's loss by its weight, without normalising). Two ways to
parameterise s (``weights`` hyperparameter):

* ``table`` (Instance Table): one raw value per example, ``s_b = act(p[slot_b])``, p initialised
  to ``init`` (the reference's 1.0), act = ``clip`` to ``[weight_min, weight_max]`` (the
  reference's ``Clip``, bounds [-1, 3]; weight_min defaults to 0 here, since a negative weight
  on an LM sequence is gradient ascent on its loss, which has no bound). The example's slot is
  ``example_id mod table_size``, ``example_id`` the 32-bit content hash of the token row
  (``mixjax.mixing.feasible.example_hash``): a packed batch carries no index, and the hash is
  the same row's identity across epochs, shuffles and resumes. The table and its optimiser
  state live in ``mix_state`` and are checkpointed with the run.
* ``net`` (Instance Net): a small MLP scores each example from a cheap feature of the model's
  own prediction, as the reference does: per supervised token t the pair ``(q_t, 1 - q_t)``,
  q_t = exp(-l_bt) the probability the model (w) gives the true next token (the reference's
  softmax over the '+'/'-' logits at each step label), one LeakyReLU hidden layer of
  ``hidden`` units (run_net.sh: 10), the output averaged over the sequence's tokens, then
  ``act`` (run_net.sh: ``sigmoid``). The feature is a constant of the model (the reference
  lets the model's gradient flow through its own weight; we do not).

The upper level is the target (validation) batch's loss, as in ``methods.bilevel``. Which
hypergradient estimator: the reference uses Betty's ``darts`` (one lower step unrolled, the
Hessian-vector product by finite differences). Here the weights are learned by the same
first-order penalty (ScaleBiO) engine that learns the K domain logits
(:func:`mixjax.methods.bilevel.penalty_update`, one engine for both): with u the lower copy
and w the upper copy of the model,

    grad_p = a * J_s(p)^T (l(w) - l(u)) / B

(l(.) the vector of the batch's sequence losses): an example that the target-pulled model w
fits worse than the training-only model u loses weight. To first order l_b(w) - l_b(u) =
grad l_b . (w - u), and w - u accumulates the target gradient, so the signal is the
alignment of the example's gradient with the target's that the reference's unrolled step
measures; the estimator is not the reference's.

``meta_weight_net`` (the same engine, other defaults): the net scores the sequence's loss
l_b alone (one input, 100 ReLU units, sigmoid) and the weights are normalised to mean 1
over the batch: Meta-Weight-Net (Shu et al. 2019), the loss-to-weight map learned against a
clean meta set (see :class:`MetaWeightNetMethod`).

Stability recipe of the paper (named in its abstract): bounded weights (``clip``/``sigmoid``),
one upper step per lower step (``unroll_steps 1``), and a cold start (the reference first
fine-tunes the model, run_coldstart.sh; here: ``model.init_from``, a trained run). Cost as
``bilevel``: three forward+backward passes per step and two model copies; the table adds
3 x table_size floats (values, AdamW moments).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from mixjax import mixing
from mixjax.core import state as state_lib
from mixjax.methods.base import (Method, MethodContext, OwnWeights, StepParts, register,
                                 step_metrics, token_loss_fn)
from mixjax.methods.bilevel import penalty_state, penalty_update, penalty_uwp
from mixjax.mixing import domain_stats
from mixjax.mixing import grads as G
from mixjax.mixing.feasible import example_hash

KINDS = ("table", "net")
FEATURES = ("confidence", "loss")
ACTIVATIONS = ("clip", "sigmoid", "leaky_relu")
LEAKY_SLOPE = 0.01            # torch.nn.LeakyReLU's default, used by the reference


def activate(x: jax.Array, kind: str, lo: float = 0.0, hi: float = 3.0) -> jax.Array:
    if kind == "clip":
        return jnp.clip(x, lo, hi)
    if kind == "sigmoid":
        return jax.nn.sigmoid(x)
    if kind == "leaky_relu":
        return jax.nn.leaky_relu(x, LEAKY_SLOPE)
    raise ValueError(f"unknown activation {kind!r}; known: {ACTIVATIONS}")


def slots(tokens: jax.Array, table_size: int) -> jax.Array:
    """i32[B]: each row's table slot, ``example_hash(row) mod table_size``."""
    return (example_hash(tokens) % jnp.uint32(table_size)).astype(jnp.int32)


def token_features(token_loss: jax.Array) -> jax.Array:
    """f32[B, S, 2]: ``(q, 1 - q)`` per token, q = exp(-l) the true next token's probability."""
    q = jnp.exp(-token_loss.astype(jnp.float32))
    return jnp.stack([q, 1.0 - q], axis=-1)


def net_init(seed: int, hidden: int, features: int = 2) -> dict[str, jax.Array]:
    """The instance net's parameters, torch ``nn.Linear``'s default init (U(+-1/sqrt(fan_in)))."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    b1, b2 = 1.0 / math.sqrt(features), 1.0 / math.sqrt(hidden)
    u = lambda k, shape, b: jax.random.uniform(k, shape, jnp.float32, -b, b)  # noqa: E731
    return {"w1": u(k1, (features, hidden), b1), "b1": u(k2, (hidden,), b1),
            "w2": u(k3, (hidden,), b2), "b2": u(k4, (), b2)}


def net_scores(net: Mapping[str, jax.Array], feats: jax.Array, mask: jax.Array,
               hidden_act=None) -> jax.Array:
    """f32[B]: the net's output averaged over each sequence's counted tokens (pre-activation);
    the hidden layer's activation is LeakyReLU (DreamPRM) unless ``hidden_act`` is given."""
    z = feats @ net["w1"] + net["b1"]
    h = jax.nn.leaky_relu(z, LEAKY_SLOPE) if hidden_act is None else hidden_act(z)
    out = h @ net["w2"] + net["b2"]
    m = mask.astype(jnp.float32)
    return (out * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


@dataclasses.dataclass(frozen=True)
class InstanceWeights:
    """How s_b is computed from p (``table`` or ``net``) and the batch."""

    kind: str
    activation: str
    weight_min: float = 0.0
    weight_max: float = 3.0
    table_size: int = 1 << 16
    feature: str = "confidence"     # net input: per-token (q, 1-q), or "loss": the row's l_b
    normalize: bool = False         # s_b / mean_b s_b (Meta-Weight-Net); False: as is

    def __call__(self, p, batch: Mapping[str, jax.Array], aux: Mapping[str, jax.Array]):
        """f32[B] instance weights; ``aux`` = the model's ``tl``/``tm`` (token loss, mask)."""
        if self.kind == "table":
            raw = p[slots(batch["tokens"], self.table_size)]
        elif self.feature == "loss":      # one input, the sequence's mean token loss; ReLU
            tl, tm = aux["tl"], aux["tm"]
            row = (tl * tm).sum(axis=1) / jnp.maximum(tm.sum(axis=1), 1.0)
            raw = net_scores(p, row[:, None, None], jnp.ones_like(row)[:, None],
                             hidden_act=jax.nn.relu)
        else:
            raw = net_scores(p, token_features(aux["tl"]), aux["tm"])
        s = activate(raw, self.activation, self.weight_min, self.weight_max)
        if self.normalize:
            valid = (aux["tm"].sum(axis=1) > 0).astype(jnp.float32)
            total = (s * valid).sum()
            s = jnp.where(total > 0, s * valid.sum() / jnp.where(total > 0, total, 1.0), s)
        return s


def example_loss_vec(token_loss_fn: G.TokenLossFn, batch: Mapping[str, jax.Array]):
    """``params -> (l f32[B] sequence mean token losses, {tl, tm})`` for the penalty engine."""
    def loss_vec(params):
        tl, tm = token_loss_fn(params, batch)
        tl, tm = tl.astype(jnp.float32), tm.astype(jnp.float32)
        return (tl * tm).sum(axis=1) / jnp.maximum(tm.sum(axis=1), 1.0), {"tl": tl, "tm": tm}
    return loss_vec


def instance_update(token_loss_fn: G.TokenLossFn, uwp: Mapping[str, Any],
                    batch: Mapping[str, jax.Array], *, weights: InstanceWeights,
                    tx_u: optax.GradientTransformation, tx_w: optax.GradientTransformation,
                    tx_p: optax.GradientTransformation, penalty: float):
    """One step of the penalty engine with ``L2 = (1/B) sum_b s_b(p) l_b`` (module docstring).

    Returns ``(new uwp, parts)``; ``parts`` as :func:`~mixjax.methods.bilevel.penalty_update`,
    ``parts["c"]`` = s / B at the old p and ``parts["s"]`` = s.
    """
    b = batch["tokens"].shape[0]
    new, parts = penalty_update(example_loss_vec(token_loss_fn, batch),
                                lambda p, aux: weights(p, batch, aux) / b, uwp,
                                G.target_batch(batch), token_loss_fn, tx_u=tx_u, tx_w=tx_w,
                                tx_p=tx_p, penalty=penalty)
    return new, {**parts, "s": parts["c"] * b}


def domain_view(s: jax.Array, valid: jax.Array, domain_id: jax.Array, k: int) -> jax.Array:
    """f32[K] summing to 1: each domain's mean instance weight in the batch (a domain without
    rows takes the batch mean), normalised: what the loop logs as the run's weights."""
    v = valid.astype(jnp.float32)
    tot = jax.ops.segment_sum(s * v, domain_id, k)
    cnt = jax.ops.segment_sum(v, domain_id, k)
    batch_mean = (s * v).sum() / jnp.maximum(v.sum(), 1.0)
    mean = jnp.where(cnt > 0, tot / jnp.maximum(cnt, 1.0), batch_mean)
    mean = jnp.maximum(mean, 0.0)
    z = mean.sum()
    return jnp.where(z > 0, mean / jnp.maximum(z, 1e-30), jnp.full((k,), 1.0 / k))


@register
class DreamPRMMethod(Method):
    """Instance-level bilevel weights (``train.objective=dreamprm``; module docstring)::

        params = w, opt_state = opt_w; extra = {lower_params: u, lower_opt_state: opt_u}
        mix_state = {weights (per-domain mean instance weight, normalised), weight_sum,
                     num_weights, nonfinite_domain, logits = p (table f32[table_size] or the
                     net's parameters), logits_opt_state}

    p uses AdamW (``lr_p``, ``meta_weight_decay``) as the reference's upper problem
    (run_table.sh: 5e-3; run_net.sh: 1e-4; weight decay 1e-3). ``activation`` None picks
    the reference's: ``clip`` for the table, ``sigmoid`` for the net.
    """

    name = "dreamprm"
    hparams = {"weights": "table", "penalty": 10.0, "lr_p": 5e-3, "meta_weight_decay": 1e-3,
               "lower_lr": None, "activation": None, "weight_min": 0.0, "weight_max": 3.0,
               "init": 1.0, "table_size": 1 << 16, "hidden": 10, "feature": "confidence",
               "normalize": False}

    def check(self, hp) -> None:
        if hp["weights"] not in KINDS:
            raise ValueError(f"{self.name} weights must be one of {KINDS}, got {hp['weights']!r}")
        if hp["activation"] is not None and hp["activation"] not in ACTIVATIONS:
            raise ValueError(f"{self.name} activation must be one of {ACTIVATIONS} or None, got "
                             f"{hp['activation']!r}")
        for key in ("penalty", "lr_p"):
            if not (isinstance(hp[key], (int, float)) and hp[key] > 0):
                raise ValueError(f"{self.name} {key} must be > 0, got {hp[key]!r}")
        if not hp["meta_weight_decay"] >= 0:
            raise ValueError(f"{self.name} meta_weight_decay must be >= 0, got "
                             f"{hp['meta_weight_decay']!r}")
        if hp["lower_lr"] is not None and not hp["lower_lr"] > 0:
            raise ValueError(f"{self.name} lower_lr must be > 0 or None, got {hp['lower_lr']}")
        if not hp["weight_min"] < hp["weight_max"]:
            raise ValueError(f"{self.name} weight_min must be < weight_max, got "
                             f"{hp['weight_min']} >= {hp['weight_max']}")
        if hp["feature"] not in FEATURES:
            raise ValueError(f"{self.name} feature must be one of {FEATURES}, got "
                             f"{hp['feature']!r}")
        if not isinstance(hp["normalize"], bool):
            raise TypeError(f"{self.name} normalize must be a bool, got {hp['normalize']!r}")
        for key in ("table_size", "hidden"):
            if not (isinstance(hp[key], int) and hp[key] >= 1):
                raise ValueError(f"{self.name} {key} must be an int >= 1, got {hp[key]!r}")

    def build(self, ctx: MethodContext, hp) -> StepParts:
        cfg, k = ctx.cfg, ctx.num_domains
        tx_w, schedule = ctx.tx, ctx.schedule
        tx_u = tx_w if hp["lower_lr"] is None else state_lib.make_optimizer(
            dataclasses.replace(cfg.optim, lr=float(hp["lower_lr"])), ctx.schedule_steps)[0]
        tx_p = optax.adamw(float(hp["lr_p"]), weight_decay=float(hp["meta_weight_decay"]))
        act = hp["activation"] or ("clip" if hp["weights"] == "table" else "sigmoid")
        weights = InstanceWeights(hp["weights"], act, float(hp["weight_min"]),
                                  float(hp["weight_max"]), int(hp["table_size"]),
                                  hp["feature"], bool(hp["normalize"]))
        loss_fn = token_loss_fn(ctx)
        penalty = float(hp["penalty"])

        def init_fn(params):
            if weights.kind == "table":
                p = jnp.full((weights.table_size,), float(hp["init"]), jnp.float32)
            else:
                p = net_init(cfg.train.seed, int(hp["hidden"]),
                             1 if weights.feature == "loss" else 2)
            return penalty_state(params, p, k, cfg.train.seed, tx_w=tx_w, tx_u=tx_u, tx_p=tx_p)

        def step_fn(state, batch, frozen=None):
            del frozen
            ms = state.mix_state
            uwp = penalty_uwp(state)
            new, m = instance_update(loss_fn, uwp, batch, weights=weights, tx_u=tx_u,
                                     tx_w=tx_w, tx_p=tx_p, penalty=penalty)
            dom = batch["domain_id"]
            tl, tm = m["aux_w"]["tl"], m["aux_w"]["tm"]
            domain_loss, domain_count = domain_stats.domain_mean(tl, tm, dom, k)
            row_bad = ~jnp.isfinite(m["lw"]) | ~jnp.isfinite(m["lu"]) | ~jnp.isfinite(m["s"])
            dom_bad = jax.ops.segment_sum(row_bad.astype(jnp.int32), dom, k) > 0
            bad = jnp.where(dom_bad.any(), jnp.argmax(dom_bad), -1).astype(jnp.int32)
            ok = bad < 0
            # Non-finite losses: keep the previous p (the host then raises, naming the domain).
            keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa
            logits, logits_opt = keep(new["p"], ms["logits"]), keep(new["opt_p"],
                                                                  ms["logits_opt_state"])
            valid = tm.sum(axis=1) > 0
            s = m["s"]
            w_dom = domain_view(s, valid, dom, k)
            mix_state = mixing.record_weights(ms, w_dom, logits=logits,
                                              logits_opt_state=logits_opt, nonfinite_domain=bad)
            new_state = state.replace(params=new["w"], opt_state=new["opt_w"],
                                      mix_state=mix_state, step=state.step + 1,
                                      extra={"lower_params": new["u"],
                                             "lower_opt_state": new["opt_u"]})
            l2_w, l2_u = jnp.dot(m["c"], m["lw"]), jnp.dot(m["c"], m["lu"])
            vf = valid.astype(jnp.float32)
            any_valid = valid.any()
            metrics = step_metrics(
                step=state.step, objective=m["val_loss"] + penalty * (l2_w - l2_u),
                domain_loss=domain_loss, domain_count=domain_count, weights=w_dom,
                sampling_weights=batch["sampling_weights"], grad_norm=m["grad_norm_w"],
                nonfinite_domain=bad, lr=schedule(state.step),
                extra={"val_loss": m["val_loss"], "L2_w": l2_w, "L2_u": l2_u,
                       "L2_gap": l2_w - l2_u,
                       "instance_weight_mean": (s * vf).sum() / jnp.maximum(vf.sum(), 1.0),
                       "instance_weight_min": jnp.where(any_valid, jnp.min(
                           jnp.where(valid, s, jnp.inf)), 0.0),
                       "instance_weight_max": jnp.where(any_valid, jnp.max(
                           jnp.where(valid, s, -jnp.inf)), 0.0)})
            return new_state, metrics

        return StepParts(step_fn=step_fn, init_fn=init_fn, weights=OwnWeights(name=self.name),
                         needs_target=True)


@register
class MetaWeightNetMethod(DreamPRMMethod):
    """Meta-Weight-Net (``train.objective=meta_weight_net``): the instance net on the
    sequence's loss, as Shu et al. (NeurIPS 2019, arXiv 1902.07379; ``xjtushujun/meta-weight-net``
    at 3f1800f: ``resnet.py`` 275-289 ``VNet(1, 100, 1)``, Linear-ReLU-Linear-sigmoid on the
    detached per-example loss; ``train_WRN-28-10_Meta_PGC.py`` 128-140 and 166-179: weights
    normalised by their batch sum; 94-97: the net's SGD at lr 1e-3). Same engine and state as
    ``dreamprm`` (the reference unrolls one SGD step instead); only the defaults differ.
    """

    name = "meta_weight_net"
    hparams = {**DreamPRMMethod.hparams, "weights": "net", "feature": "loss", "hidden": 100,
               "normalize": True, "lr_p": 1e-3, "activation": "sigmoid"}
