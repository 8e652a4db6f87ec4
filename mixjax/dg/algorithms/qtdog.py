"""QT-DoG, quantisation-aware training as a flatness regulariser (Javed, Le & Salzmann,
"QT-DoG: Quantization-aware Training for Domain Generalization", arXiv 2410.06020), the
authors' code (saqibjaved1/QT-DoG, commit e9d55eb: ``domainbed/trainer.py``,
``domainbed/quan/func.py``, ``domainbed/quan/utils.py``, ``domainbed/quan/quantizer/lsq.py``,
``config_q.yaml``, ``train_all.py``).

ERM (Adam(lr, weight_decay)) until step ``q_steps``; at that step every convolution kernel w
(every ``Conv2d``; ``qt_linear = 1`` also quantises linear kernels, the code's commented-out
``QuanLinear`` mapping) is replaced by its LSQ fake-quantised copy (Esser et al., ICLR 2020)
and the forward pass uses, from then on,

    thd_neg, thd_pos = -2^(b-1), 2^(b-1) - 1             (signed, asymmetric; b = qt_bits = 7)
    s_c = 2 mean_{i in channel c} |w_i| / sqrt(thd_pos)   (per output channel, set at q_steps)
    s~ = s (forward), grad s~ = grad s / sqrt(thd_pos * numel(w))   (LSQ gradient scale)
    Q(w) = round_ste(clip(w / s~, thd_neg, thd_pos)) * s~ (round with a straight-through gradient)

Activations are not quantised (the code builds an 8-bit activation quantiser but its
forward is commented out). ``config_q.yaml``'s ``excepts`` (``conv1``, ``fc``) never match,
because the code compares them with full module names (``featurizer.network.conv1``), so
every convolution, the first included, is quantised.

What the code then trains (``qt_train_quantized``):

* ``0`` (default, the code as it runs): the quantised modules hold *new* ``Parameter``s
  (``nn.Parameter(m.weight.detach())``, sharing storage with the old ones) and the ERM
  optimiser is not rebuilt, so no loss gradient reaches the kernels or the step sizes s any
  more. The old parameters stay in Adam with a zeroed gradient (torch 1.10.1, the version
  the README pins, zeroes grads in place), so Adam keeps moving the shared storage by its
  decaying moments and the weight decay only. mixjax reproduces exactly that: from q_steps
  on the quantised kernels enter Adam with gradient 0, and s is never updated.
  (Under torch >= 2.0, ``zero_grad`` sets grads to ``None`` and the kernels freeze exactly.)
* ``1`` (QAT as the paper describes it): straight-through gradients train the kernels, s is
  trained with its own Adam(lr, weight_decay), and the optimiser is re-initialised at
  q_steps (as a rebuilt optimiser would be).

Hyperparameters (the code has no random search for them): q_steps 2000 (``train_all.py``
default; the README's example uses 100), qt_bits 7 (``config_q.yaml``), qt_train_quantized 0,
qt_linear 0. The code's default ``config.yaml`` also turns on SWAD weight averaging; that is
a separate method and not part of this step. On an MLP featuriser (no convolutions) QT-DoG
is ERM unless ``qt_linear = 1``.
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy, reset_where


def lsq_levels(bits):
    """(thd_neg, thd_pos) of the signed, asymmetric LSQ quantiser; ``bits`` may be traced."""
    return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1


def lsq_init(w, bits):
    """Per-output-channel (last axis) step sizes 2 mean|w| / sqrt(thd_pos), shaped to broadcast."""
    axes = tuple(range(w.ndim - 1))
    return 2 * jnp.abs(w).mean(axis=axes, keepdims=True) / jnp.sqrt(lsq_levels(bits)[1])


def _grad_scale(x, scale):
    return jax.lax.stop_gradient(x - x * scale) + x * scale


def _round_ste(x):
    return jax.lax.stop_gradient(jnp.round(x) - x) + x


def lsq_quantize(w, s, bits):
    """LSQ fake quantisation of ``w`` with step sizes ``s`` (``LsqQuan.forward``)."""
    neg, pos = lsq_levels(bits)
    s = _grad_scale(s, 1.0 / jnp.sqrt(pos * w.size))
    return _round_ste(jnp.clip(w / s, neg, pos)) * s


def quantizable(leaf, linear) -> jax.Array:
    """Whether a parameter leaf is quantised: conv kernels (4-D), and linear kernels (2-D) if ``linear``."""
    if leaf.ndim == 4:
        return jnp.bool_(True)
    if leaf.ndim == 2:
        return linear > 0
    return jnp.bool_(False)


def init_steps(params):
    """Placeholder step sizes (one per output channel of every leaf; scalars for vectors)."""
    return jax.tree.map(lambda w: jnp.ones((1,) * (w.ndim - 1) + w.shape[-1:]) if w.ndim >= 2 else jnp.ones(()), params)


def fake_quantize(params, steps, active, bits, linear):
    """The network's parameters as the forward pass sees them."""
    def leaf(w, s):
        if w.ndim < 2:
            return w
        return jnp.where(active & quantizable(w, linear), lsq_quantize(w, s, bits), w)

    return jax.tree.map(leaf, params, steps)


@register
class QTDoG(Algorithm):
    name = "qtdog"

    @classmethod
    def own_hparams(cls, small):
        return {
            "q_steps": H.HParam(2000, lambda r: 2000),
            "qt_bits": H.HParam(7, lambda r: 7),
            "qt_train_quantized": H.HParam(0, lambda r: 0),
            "qt_linear": H.HParam(0, lambda r: 0),
        }

    def init(self, key, hp):
        state = super().init(key, hp)
        steps = init_steps(state["params"])
        # predict() has no hp: the state carries what the forward pass needs
        return {**state, "steps": steps, "steps_opt": self.tx(hp).init(steps), "quantized": jnp.bool_(False),
                "qt_bits": jnp.asarray(hp["qt_bits"], jnp.float32), "qt_linear": jnp.asarray(hp["qt_linear"], jnp.float32)}

    def qloss(self, params, steps, active, hp, xs, ys):
        q = fake_quantize(params, steps, active, hp["qt_bits"], hp["qt_linear"])
        return cross_entropy(self.env_logits(q, xs), ys)

    def update(self, hp, state, xs, ys, key):
        step, params, tx = state["step"], state["params"], self.tx(hp)
        start, active = step == hp["q_steps"], step >= hp["q_steps"]
        paper = hp["qt_train_quantized"] > 0
        steps = jax.tree.map(lambda s, w: jnp.where(start, lsq_init(w, hp["qt_bits"]), s) if w.ndim >= 2 else s,
                             state["steps"], params)
        opt = reset_where(start & paper, tx.init(params), state["opt"])
        steps_opt = reset_where(start, tx.init(steps), state["steps_opt"])

        loss, (g_params, g_steps) = jax.value_and_grad(self.qloss, argnums=(0, 1))(params, steps, active, hp, xs, ys)
        # the code as it runs: quantised kernels get a zero gradient in the (not rebuilt) optimiser
        frozen = lambda g, w: jnp.where(active & ~paper & quantizable(w, hp["qt_linear"]), 0.0, g)  # noqa: E731
        g_params = jax.tree.map(frozen, g_params, params)
        params, opt = apply_updates(tx, g_params, opt, params)
        new_steps, new_steps_opt = apply_updates(tx, g_steps, steps_opt, steps)
        train_s = active & paper
        steps = reset_where(train_s, new_steps, steps)
        steps_opt = reset_where(train_s, new_steps_opt, steps_opt)
        new = {**state, "params": params, "opt": opt, "steps": steps, "steps_opt": steps_opt, "step": step + 1,
               "quantized": state["quantized"] | active}
        return new, {"loss": loss}

    def predict(self, state, x):
        q = fake_quantize(state["params"], state["steps"], state["quantized"], state["qt_bits"], state["qt_linear"])
        return self.logits(q, x)
