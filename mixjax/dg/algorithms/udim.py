"""UDIM, unknown domain inconsistency minimisation (Shin, Bae, Na, Kim & Moon, ICLR 2024,
openreview eNoiRal5xi), the authors' code (aailabkaist/UDIM, commit 808f1b2:
``UDIM_main/domainbed/algorithms/algorithms.py`` ``IADA_DG_FINAL`` and ``SAM``,
``UDIM_main/domainbed/iada/iada_final.py`` ``IADA_FINAL``, ``UDIM_main/train_all.py``,
``UDIM_main/domainbed/hparams_registry.py``, ``UDIM_main/bash/udim_pacs_mdg.sh``), in its
multi-source setting (``is_single False`` => ``domain_wise_inconsistency True``, ``advstyle
False``).

Steps < ``udim_warmup_iters``: SAM (the code's warm-up runs its ``SAM`` algorithm),
``eps = rho g / ||g||`` (no epsilon guard), Adam step with grad L(w + eps).
After the warm-up, with x, y the concatenated env batches and L the mean cross-entropy:

1. unknown-domain inputs (one normalised input-gradient ascent step):
       d = grad_x [ L(w; x) + rho ||grad_w L(w; x)|| ]          (double backward)
       x~ = x + syn_lr * d / max(||d||_batch, 1e-12)
   where ``||d||_batch`` is the norm over the *batch axis* at each pixel and channel
   (``F.normalize(grad, p=2, dim=0)`` in the code, not a per-example norm);
2. the SAM gradient on the source batch, ``g_sam = grad L(w + rho g / ||g||; x)``;
3. the inconsistency loss, per training env e, from per-example gradients of the linear
   head (W, b) for the example-wise CE (BackPACK ``BatchGrad`` / ``BatchL2Grad`` on
   ``CE(reduction='none').sum()``): with G_o = the b source examples' gradients and G_s those
   of their perturbed copies, per coordinate
       v_o = mean_n (G_o[n] - mean G_o)^2,   v_s = mean_n (G_s[n] - mean G_o)^2   (centred on the
       *source* mean, as the code),   m = (v_o + v_s) / 2,
       I_e = (1/2) sum_{v in (v_o, v_s)} mean_{coords of W and b}((v - m)^2)
             + sum_{P in (W, b)} mean_n ||G_s,P[n]||^2 / numel(P);
4. g = g_sam + worst_weight * grad_w sum_e I_e   (second order through the head's
   per-example gradients into the featuriser), one Adam(lr, weight_decay) step.

The code's UDIM phase uses a fixed radius 0.05 (its ``LinearScheduler(max=min=0.05)``) for
both rho's above and ``hparams['rho']`` for the SAM warm-up; mixjax uses ``rho`` for all three
(equal at the default). Hyperparameters: rho 0.05 (choice {0.01, 0.02, 0.05, 0.1},
``hparams_registry.py``), syn_lr 10 and worst_weight 1 (``udim_pacs_mdg.sh``; the argparse
defaults are 0.005 and 0.5; neither is searched), udim_warmup_iters 1000 (the code warms up
for ``n_steps // sam_warm_up_ratio`` steps, 5001 // 5 in ``udim_pacs_mdg.sh``).
Not reproduced: the code restarts the UDIM phase from the warm-up checkpoint with the best
training-domain validation accuracy (with its Adam state); here the UDIM phase continues
from the last warm-up step. Cost after the warm-up: about 5 forward/backward passes, one of
them second order.
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy


def sam_point(grads, params, rho):
    """w + rho g / ||g|| (the code's SAM has no epsilon in the norm)."""
    norm = optax.tree.norm(grads)
    return jax.tree.map(lambda w, g: w + rho * g / norm, params, grads)


def normalize_batch_axis(d):
    """``F.normalize(d, p=2, dim=0)``: each input coordinate divided by its norm over the batch."""
    return d / jnp.maximum(jnp.sqrt((d**2).sum(0, keepdims=True)), 1e-12)


def head_example_grads(z, w, b, y):
    """Per-example gradients of CE(z_n W + b, y_n): (f32[N, D, C], f32[N, C]) (flax layout of W)."""
    r = jax.nn.softmax(z @ w + b) - jax.nn.one_hot(y, b.shape[-1])
    return z[:, :, None] * r[:, None, :], r


def inconsistency(z, zs, w, b, y):
    """I_e of step 3 for one env: z, zs f32[n, D] source / perturbed features, y int32[n]."""
    go_w, go_b = head_example_grads(z, w, b, y)
    gs_w, gs_b = head_example_grads(zs, w, b, y)
    v_o, v_s, norm_term = [], [], 0.0
    for go, gs in ((go_w, gs_w), (go_b, gs_b)):
        n = go.shape[0]
        mean_o = go.mean(0)
        v_o.append(((go - mean_o) ** 2).mean(0).reshape(-1))
        v_s.append(((gs - mean_o) ** 2).mean(0).reshape(-1))
        norm_term = norm_term + (gs.reshape(n, -1) ** 2).sum(-1).mean() / gs[0].size
    v_o, v_s = jnp.concatenate(v_o), jnp.concatenate(v_s)
    m = (v_o + v_s) / 2
    penalty = (((v_o - m) ** 2).mean() + ((v_s - m) ** 2).mean()) / 2
    return penalty + norm_term


@register
class UDIM(Algorithm):
    name = "udim"

    @classmethod
    def own_hparams(cls, small):
        return {
            "rho": H.HParam(0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1]))),
            "syn_lr": H.HParam(10.0, lambda r: 10.0),
            "worst_weight": H.HParam(1.0, lambda r: 1.0),
            "udim_warmup_iters": H.HParam(1000, lambda r: 1000),
        }

    def ce(self, params, x, y):
        return cross_entropy(self.logits(params, x), y)

    def perturbed_inputs(self, params, x, y, rho, syn_lr):
        def objective(xx):
            g = jax.grad(self.ce)(params, xx, y)
            return self.ce(params, xx, y) + rho * optax.tree.norm(g)

        return x + syn_lr * normalize_batch_axis(jax.grad(objective)(x))

    def inconsistency_loss(self, params, xs, xs_syn, ys):
        k, b = xs.shape[:2]
        both = jnp.concatenate([xs, xs_syn], 1)  # [K, 2b, ...]: each env's source then perturbed batch
        z = self.features(params, both.reshape(k * 2 * b, *xs.shape[2:])).reshape(k, 2 * b, -1)
        head = self.model.merge(params).classifier
        w, bias = head.kernel[...], head.bias[...]
        return sum(inconsistency(z[e, :b], z[e, b:], w, bias, ys[e]) for e in range(k))

    def udim_grads(self, hp, params, xs, ys):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        loss, g = jax.value_and_grad(self.ce)(params, x, y)
        x_syn = jax.lax.stop_gradient(self.perturbed_inputs(params, x, y, hp["rho"], hp["syn_lr"]))
        g_sam = jax.grad(self.ce)(sam_point(g, params, hp["rho"]), x, y)
        inc, g_inc = jax.value_and_grad(self.inconsistency_loss)(params, xs, x_syn.reshape(xs.shape), ys)
        return jax.tree.map(lambda a, c: a + hp["worst_weight"] * c, g_sam, g_inc), loss, inc

    def sam_grads(self, hp, params, xs, ys):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        loss, g = jax.value_and_grad(self.ce)(params, x, y)
        return jax.grad(self.ce)(sam_point(g, params, hp["rho"]), x, y), loss

    def update(self, hp, state, xs, ys, key):
        params = state["params"]
        warm = state["step"] < hp["udim_warmup_iters"]
        grads, loss, inc = jax.lax.cond(
            warm,
            lambda: (*self.sam_grads(hp, params, xs, ys), jnp.zeros(())),
            lambda: self.udim_grads(hp, params, xs, ys),
        )
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], params)
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, {"loss": loss, "inconsistency": inc}
