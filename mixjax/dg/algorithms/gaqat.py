"""GAQAT, gradient-adaptive quantisation-aware training for DG (Jiang, Meng, Tang, Yu, Li,
Wang & Zhu, "GAQAT: gradient-adaptive quantization-aware training for domain
generalization", arXiv 2412.05551). No public code was found (searched the code corpus for
"GAQAT", repositories named *GAQAT*, and quantiser-scale / gradient-conflict code), so this is
the paper's description (abstract and method summary: "the task loss and smoothness loss induce
conflicting gradients for the scaling factors of quantizers ... quantify gradient
inconsistencies and selectively freeze the gradients of scaling factors") with the choices
below stated. It extends QT-DoG (``qtdog.py``): the same LSQ fake quantiser and its
per-output-channel step-size initialisation.

Quantiser (``qtdog.lsq_quantize``): every kernel w (convolutions, and - unlike QT-DoG's
default - linear kernels too, as low-bit QAT quantises every layer; so an MLP featuriser is
quantised as well) is replaced from step ``q_steps`` on by

    Q(w; s) = round_ste(clip(w / s~, -2^(b-1), 2^(b-1) - 1)) * s~,   b = ``qt_bits`` (4)

with per-output-channel step sizes s (LSQ init 2 mean|w| / sqrt(2^(b-1) - 1) at q_steps, LSQ
gradient scale). Weights train through the straight-through estimator, s by its own
Adam(lr, weight_decay); both optimisers restart at q_steps (a rebuilt optimiser). Activations
are not quantised (as QT-DoG's code).

Objective (our choice of the paper's "smoothness loss"): SAM's (``sam.py``). With
L_task = L(w; s), eps = rho g_w / ||g_w|| (g_w = dL_task/dw, over all weights, s not perturbed)
and the smoothness loss L_smooth = L(w + eps; s) - L(w; s) (SAM's surrogate gap, eps held
fixed), the weights step along d(L_task + L_smooth)/dw = dL(w + eps; s)/dw (SAM).

Scale-gradient conflict and freezing (our choices of the paper's "gradient disorder" and
"selective freezing"): per quantised layer l (one kernel, its C step sizes),

    g_task = dL_task/ds_l,   g_smooth = dL_smooth/ds_l = dL(w + eps; s)/ds_l - g_task
    c_l    = (1/C) sum_c [g_task,c * g_smooth,c < 0]        (fraction of conflicting channels)
    d_l   <- m d_l + (1 - m) c_l                             (disorder: EMA over steps, m = gaqat_momentum, d_l = 0 at q_steps)
    frozen_l = d_l > tau                                     (tau = gaqat_tau)

A frozen layer's s_l and its Adam moments stay as they are this step (a true freeze: no
momentum drift; Adam's shared step count still advances); the others step along g_task + g_smooth. Freezing is re-decided every step,
so a layer thaws when its disorder falls. Metrics: ``frozen_frac`` (share of quantised layers
frozen) and ``disorder`` (their mean d_l).

Before q_steps the step is plain SAM on the full-precision network. Hyperparameters (ours; the
paper's 3/4-bit PACS/DomainNet setting): qt_bits 4, q_steps 0 (QAT from the start; the paper
fine-tunes pre-trained networks), rho 0.05 (``sam``'s), gaqat_tau 0.5, gaqat_momentum 0.9.
Cost: 2 forward/backward passes per step (SAM's).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy, reset_where
from mixjax.dg.algorithms.qtdog import fake_quantize, init_steps, lsq_init
from mixjax.dg.algorithms.sam import sam_perturbation

LINEAR = 1.0    # linear kernels are quantised too (qtdog's qt_linear = 1)


def is_layer(w) -> bool:
    """Whether a parameter leaf is a quantised kernel (conv 4-D or linear 2-D)."""
    return w.ndim >= 2


def conflict_fraction(g_task, g_smooth):
    """c_l: the share of a layer's step sizes whose task and smoothness gradients disagree in sign."""
    return jnp.mean((g_task * g_smooth < 0).astype(jnp.float32))


@register
class GAQAT(Algorithm):
    name = "gaqat"

    @classmethod
    def own_hparams(cls, small):
        return {
            "q_steps": H.HParam(0, lambda r: 0),
            "qt_bits": H.HParam(4, lambda r: int(r.choice([3, 4]))),
            "rho": H.HParam(0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1]))),
            "gaqat_tau": H.HParam(0.5, lambda r: float(r.uniform(0.3, 0.7))),
            "gaqat_momentum": H.HParam(0.9, lambda r: float(r.choice([0.5, 0.9, 0.99]))),
        }

    def init(self, key, hp):
        state = super().init(key, hp)
        steps = init_steps(state["params"])
        layer_zeros = jax.tree.map(lambda w: jnp.zeros(()), state["params"])
        return {**state, "steps": steps, "steps_opt": self.tx(hp).init(steps), "quantized": jnp.bool_(False),
                "qt_bits": jnp.asarray(hp["qt_bits"], jnp.float32), "disorder": layer_zeros}

    def qloss(self, params, steps, active, bits, xs, ys):
        q = fake_quantize(params, steps, active, bits, LINEAR)
        return cross_entropy(self.env_logits(q, xs), ys)

    def update(self, hp, state, xs, ys, key):
        step, params, tx = state["step"], state["params"], self.tx(hp)
        start, active = step == hp["q_steps"], step >= hp["q_steps"]
        bits = hp["qt_bits"]
        steps = jax.tree.map(lambda s, w: jnp.where(start, lsq_init(w, bits), s) if is_layer(w) else s,
                             state["steps"], params)
        opt = reset_where(start, tx.init(params), state["opt"])
        steps_opt = reset_where(start, tx.init(steps), state["steps_opt"])
        disorder = jax.tree.map(lambda d: jnp.where(start, 0.0, d), state["disorder"])

        grad = jax.value_and_grad(self.qloss, argnums=(0, 1))
        loss, (g_w, g_s) = grad(params, steps, active, bits, xs, ys)
        perturbed = jax.tree.map(jnp.add, params, sam_perturbation(g_w, hp["rho"]))
        sharp_loss, (h_w, h_s) = grad(perturbed, steps, active, bits, xs, ys)

        m = hp["gaqat_momentum"]
        disorder = jax.tree.map(
            lambda d, gt, ht, w: jnp.where(active, m * d + (1 - m) * conflict_fraction(gt, ht - gt), d)
            if is_layer(w) else d, disorder, g_s, h_s, params)
        frozen = jax.tree.map(lambda d, w: active & (d > hp["gaqat_tau"]) if is_layer(w) else jnp.bool_(True),
                              disorder, params)

        params, opt = apply_updates(tx, h_w, opt, params)
        new_steps, new_steps_opt = apply_updates(tx, h_s, steps_opt, steps)
        # per layer: a frozen (or not yet quantised) layer keeps its step sizes and their Adam state
        keep = jax.tree.map(lambda f: f | ~active, frozen)
        steps = jax.tree.map(lambda k, old, new: jnp.where(k, old, new), keep, steps, new_steps)
        steps_opt = _per_leaf_select(keep, steps_opt, new_steps_opt)

        layers = [(d, f) for d, f, w in zip(jax.tree.leaves(disorder), jax.tree.leaves(frozen),
                                            jax.tree.leaves(params)) if is_layer(w)]
        metrics = {"loss": loss, "sharp_loss": sharp_loss,
                   "frozen_frac": jnp.mean(jnp.stack([f for _, f in layers]).astype(jnp.float32)),
                   "disorder": jnp.mean(jnp.stack([d for d, _ in layers]))}
        new = {**state, "params": params, "opt": opt, "steps": steps, "steps_opt": steps_opt,
               "disorder": disorder, "step": step + 1, "quantized": state["quantized"] | active}
        return new, metrics

    def predict(self, state, x):
        q = fake_quantize(state["params"], state["steps"], state["quantized"], state["qt_bits"], LINEAR)
        return self.logits(q, x)


def _per_leaf_select(keep, old_state, new_state):
    """Optimiser state: every params-shaped subtree (Adam's mu and nu) takes the old leaf where
    ``keep``; everything else (Adam's step count) the new value."""
    treedef = jax.tree.structure(keep)
    is_params_tree = lambda x: jax.tree.structure(x) == treedef  # noqa: E731

    def select(old, new):
        if is_params_tree(old):
            return jax.tree.map(lambda k, a, b: jnp.where(k, a, b), keep, old, new)
        return new

    return jax.tree.map(select, old_state, new_state, is_leaf=is_params_tree)
