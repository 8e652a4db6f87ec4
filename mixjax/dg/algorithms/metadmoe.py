"""Meta-DMoE: test-time adaptation by distillation from domain experts (Zhong, Chen, Kong,
Tan & Zhao, "Meta-DMoE: Adapting to Domain Shift by Meta-Distillation from
Mixture-of-Experts", NeurIPS 2022, arXiv 2210.03885), from the authors' code n3il666/Meta-DMoE
(commit 719de90): ``src/fmow/fmow_train.py`` ``train_epoch`` (lines 17-128: the meta step,
lines 56-99) and ``eval`` (lines 176-248: the test-time step, lines 216-230),
``src/fmow/fmow_utils.py`` ``mask_feat`` (128-136), ``l2_loss`` (138-141), ``ResNetFeature``
(144-155, the experts' pooled features), ``fa_selector.get_feat`` (178-186),
``src/transformer.py`` (the aggregator), ``src/configs.py`` (defaults), ``run.py`` lines 92-127
(the phases).

Networks: K domain experts (one network per training environment, the dataset's
featuriser + classifier), a student (the algorithm's ``params``: featuriser f, head h) and a
knowledge aggregator A: a pre-norm transformer over the experts' feature vectors as tokens,
mean-pooled (``get_feat``):

    x <- x + MHA(LN(x));  x <- x + W2 GELU(W1 LN(x) + b1) + b2   (depth 1, width 2D, no dropout:
    the code keeps the aggregator in eval mode)    A(tokens) = mean_tokens x

Phases (``run.py``: experts, aggregator pre-training, student pre-training, meta-training,
one after another): steps < ``dmoe_expert_steps``: expert e takes an Adam(lr, weight_decay)
ERM step on environment e's batch only, and the student an ERM step on all of them (the
code's student pre-training on all training data); from then on the experts are frozen and
each step is the meta step below. The code's aggregator pre-training (a classification head
on A, trained with the experts frozen) is not reproduced: A starts from its initialisation
(torch's: xavier-uniform in-projection, zero biases) and learns from the meta loss only.

Meta step (``train_epoch``; the code draws a one-domain batch per step, here every training
environment e gives one episode and the query losses are averaged): the env's batch is split
into a support set (the first ``round(0.6 b)`` rows, the code's sup_size 24/40 .. 64/96) and a
query set (the rest);

    t     = A(stop_grad[f_j(x_sup) for experts j != e])      (the env's own expert is masked out, ``mask_feat``)
    f'    = f - ilr * d/df mean((f(x_sup) - t)^2)            (one inner SGD step on the featuriser, MAML,
                                                            second order as learn2learn's default; support labels unused)
    L_e   = CE(h(f'(x_que)), y_que)
    student (f, h) <- Adam(lr) on mean_e L_e (a fresh Adam from the first meta step, as the code's)
    A <- Adam(dmoe_agg_lr_scale * lr) on the same loss (through t)

Test time (``eval``; ``predict_with_state``, deterministic): in every evaluation environment the
first chunk's real rows are the unlabeled support set; the student adapts once,
f' = f - ilr * d/df mean((f(x) - A([f_j(x)]_{all j}))^2) (all K experts, no mask), and predicts that
chunk and every later chunk of the environment with f' (the code adapts on the first batch
of each domain and keeps the adapted model for the rest). ``predict`` (the "before" accuracy)
is the unadapted student. Cost reported: the number of support rows used.

Hyperparameters (``configs.py`` ranges; DomainBed's lr is the student's and the experts'
lr): dmoe_inner_lr (ilr) 1e-3 (camelyon; 1e-4..3e-4 elsewhere), dmoe_agg_lr_scale 0.01
(tlr / slr is 0.01-0.03 in three of the four configs), dmoe_expert_steps 1000 (a fifth of
DomainBed's 5000 steps; a shorter run must lower it - e.g. ``hparam_overrides.dmoe_expert_steps=150``
for 301 steps - or it never meta-trains and is ERM plus a test-time step towards an untrained
aggregator). Heads: the
code's 16 where the feature size allows, else the largest divisor of it below 16. Needs at
least two training environments (the masked teacher of an episode is built from the other
experts): a job with one is refused with a ``ConfigError`` when its group is built (the CLI
exits 2; groups finished before it are kept). Cost per meta step: K expert forwards on the
support rows, the aggregator, and a second-order inner step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.config import ConfigError
from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy, reset_where

SUPPORT_FRACTION = 0.6


def heads_for(d: int) -> int:
    return max(h for h in range(1, 17) if d % h == 0)


def aggregator_init(key, d: int):
    """One pre-norm transformer layer of width d, MLP width 2d (torch's initialisation)."""
    k = jax.random.split(key, 5)
    lim = lambda fan_in: 1.0 / math.sqrt(fan_in)  # noqa: E731  nn.Linear's U(-1/sqrt(fan_in), ..)
    xavier = math.sqrt(6.0 / (d + 3 * d))
    u = lambda key, shape, a: jax.random.uniform(key, shape, minval=-a, maxval=a)  # noqa: E731
    return {"ln1_g": jnp.ones(d), "ln1_b": jnp.zeros(d),
            "w_qkv": u(k[0], (d, 3 * d), xavier), "b_qkv": jnp.zeros(3 * d),
            "w_o": u(k[1], (d, d), lim(d)), "b_o": jnp.zeros(d),
            "ln2_g": jnp.ones(d), "ln2_b": jnp.zeros(d),
            "w1": u(k[2], (d, 2 * d), lim(d)), "b1": u(k[3], (2 * d,), lim(d)),
            "w2": u(k[4], (2 * d, d), lim(2 * d)), "b2": jnp.zeros(d)}


def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def aggregate(p, tokens, heads: int):
    """A(tokens): tokens f32[n, T, d] -> f32[n, d] (transformer layer, then the mean over tokens)."""
    n, t, d = tokens.shape
    h = layer_norm(tokens, p["ln1_g"], p["ln1_b"])
    q, k, v = jnp.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    split = lambda a: a.reshape(n, t, heads, d // heads)  # noqa: E731
    att = jax.nn.softmax(jnp.einsum("nthc,nshc->nhts", split(q), split(k)) / math.sqrt(d // heads), axis=-1)
    x = tokens + jnp.einsum("nhts,nshc->nthc", att, split(v)).reshape(n, t, d) @ p["w_o"] + p["b_o"]
    h = layer_norm(x, p["ln2_g"], p["ln2_b"])
    x = x + jax.nn.gelu(h @ p["w1"] + p["b1"], approximate=False) @ p["w2"] + p["b2"]
    return x.mean(axis=1)


def others(k: int) -> np.ndarray:
    """i32[K, K-1]: for episode e, the experts j != e (``mask_feat(exclude=True)``)."""
    return np.asarray([[j for j in range(k) if j != e] for e in range(k)], np.int32)


@register
class MetaDMoE(Algorithm):
    name = "metadmoe"

    def check(self):
        """``ConfigError`` (one line, exit 2 from the CLI) for a job it cannot run; called from
        ``init`` and ``update``, i.e. when the job's group is built, before its step is compiled."""
        if self.num_envs < 2:
            raise ConfigError(f"algorithm 'metadmoe' needs at least 2 training environments (one expert "
                              f"each, an episode's teacher is the other experts); this job has {self.num_envs}")
        if dict(self.static).get("batch_size", 2) < 2:
            raise ConfigError("algorithm 'metadmoe' needs batch_size >= 2 (support and query rows per environment)")

    @classmethod
    def own_hparams(cls, small):
        return {
            "dmoe_expert_steps": H.HParam(1000, lambda r: 1000),
            "dmoe_inner_lr": H.HParam(1e-3, lambda r: float(10 ** r.uniform(-4, -2))),
            "dmoe_agg_lr_scale": H.HParam(0.01, lambda r: float(r.choice([0.01, 0.03, 0.1, 1.0]))),
        }

    @property
    def batch(self) -> int:
        return self.static_hp("batch_size")

    @property
    def support(self) -> int:
        return min(self.batch - 1, max(1, round(SUPPORT_FRACTION * self.batch)))

    @property
    def dim(self) -> int:
        return self.model.abstract.featurizer.n_outputs

    def agg_tx(self, hp):
        return adam(hp["lr"] * hp["dmoe_agg_lr_scale"])

    def init(self, key, hp):
        self.check()
        k_student, k_experts, k_agg = jax.random.split(key, 3)
        state = super().init(k_student, hp)
        # one network per training env, stacked leafwise (a list, not a vmap: eagerly, its ops are
        # the ones every algorithm's init already compiled)
        nets = [self.model.init(k) for k in jax.random.split(k_experts, self.num_envs)]
        experts = jax.tree.map(lambda *leaves: jnp.stack(leaves), *nets)
        agg = aggregator_init(k_agg, self.dim)
        return {**state, "experts": experts, "experts_opt": self.tx(hp).init(experts),
                "agg": agg, "agg_opt": self.agg_tx(hp).init(agg),
                # the test-time step sees no hparams: its inner lr travels in the state
                "inner_lr": jnp.asarray(hp["dmoe_inner_lr"], jnp.float32)}

    # ---- pieces
    def expert_features(self, experts, x):
        """f32[K, n, D]: every expert's (stopped) features of x."""
        return jax.lax.stop_gradient(jax.vmap(lambda p: self.features(p, x))(experts))

    def adapt(self, params, target, x, weight, inner_lr):
        """One SGD step of the featuriser on mean_{rows, dims} weight * (f(x) - target)^2; ``weight``
        f32[n] selects the rows (1 for a real row), normalised by their count."""
        def mse(p):
            err = (self.features(p, x) - target) ** 2
            return jnp.sum(err * weight[:, None]) / (jnp.maximum(jnp.sum(weight), 1.0) * err.shape[-1])

        loss, g = jax.value_and_grad(mse)(params)
        return jax.tree.map(lambda p, d: p - inner_lr * d, params, g), loss

    def meta_loss(self, params, agg, experts, hp, xs, ys):
        k, s = self.num_envs, self.support
        sup, que = xs[:, :s], xs[:, s:]
        feats = self.expert_features(experts, sup.reshape(k * s, *xs.shape[2:]))     # [K_exp, K*s, D]
        feats = feats.reshape(k, k, s, -1).transpose(1, 2, 0, 3)                      # [K_env, s, K_exp, D]
        tokens = jnp.stack([feats[e][:, others(k)[e]] for e in range(k)])             # [K_env, s, K-1, D]
        target = aggregate(agg, tokens.reshape(k * s, k - 1, -1), heads_for(self.dim)).reshape(k, s, -1)

        def episode(x_s, t, x_q, y_q):
            adapted, inner = self.adapt(params, t, x_s, jnp.ones(x_s.shape[0]), hp["dmoe_inner_lr"])
            return cross_entropy(self.logits(adapted, x_q), y_q), inner

        losses, inner = jax.vmap(episode)(sup, target, que, ys[:, s:])
        return losses.mean(), inner.mean()

    # ---- training
    def update(self, hp, state, xs, ys, key):
        self.check()
        tx, atx = self.tx(hp), self.agg_tx(hp)

        def expert_phase(state):
            def experts_loss(experts):
                logits = jax.vmap(self.logits)(experts, xs)                           # expert e on env e
                return cross_entropy(logits, ys) * self.num_envs                      # sum of per-expert means

            g_exp = jax.grad(experts_loss)(state["experts"])
            experts, experts_opt = apply_updates(tx, g_exp, state["experts_opt"], state["experts"])
            loss, g = jax.value_and_grad(lambda p: cross_entropy(self.env_logits(p, xs), ys))(state["params"])
            params, opt = apply_updates(tx, g, state["opt"], state["params"])
            return ({**state, "params": params, "opt": opt, "experts": experts, "experts_opt": experts_opt},
                    {"loss": loss, "inner_mse": jnp.zeros(())})

        def meta_phase(state):
            (loss, inner), (g, g_agg) = jax.value_and_grad(self.meta_loss, argnums=(0, 1), has_aux=True)(
                state["params"], state["agg"], state["experts"], hp, xs, ys)
            # the code builds a new student optimiser for meta-training (``train_epoch``)
            opt = reset_where(state["step"] == hp["dmoe_expert_steps"], tx.init(state["params"]), state["opt"])
            params, opt = apply_updates(tx, g, opt, state["params"])
            agg, agg_opt = apply_updates(atx, g_agg, state["agg_opt"], state["agg"])
            return ({**state, "params": params, "opt": opt, "agg": agg, "agg_opt": agg_opt},
                    {"loss": loss, "inner_mse": inner})

        new, metrics = jax.lax.cond(state["step"] >= hp["dmoe_expert_steps"], meta_phase, expert_phase, state)
        return {**new, "step": state["step"] + 1}, metrics

    # ---- test time
    def test_time_init(self, state, meta):
        return {"params": state["params"], "adapted": jnp.bool_(False), "cost": jnp.zeros((), jnp.float32)}

    def predict_with_state(self, state, tt, x, valid):
        now = ~tt["adapted"] & jnp.any(valid)

        def adapt(params):
            feats = self.expert_features(state["experts"], x).transpose(1, 0, 2)   # [n, K, D]
            target = aggregate(state["agg"], feats, heads_for(self.dim))
            return self.adapt(params, target, x, valid.astype(jnp.float32), state["inner_lr"])[0]

        params = jax.lax.cond(now, adapt, lambda p: p, tt["params"])
        cost = tt["cost"] + jnp.where(now, jnp.sum(valid), 0).astype(jnp.float32)
        return self.logits(params, x), {"params": params, "adapted": tt["adapted"] | now, "cost": cost}
