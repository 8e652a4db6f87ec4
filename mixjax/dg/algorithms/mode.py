"""MODE, moderately distributional exploration (Dai et al., "Moderately Distributional
Exploration for Domain Generalization", ICML 2023, arXiv 2304.13976), its Fourier variant
MODE-F from the authors' code: Rxsw/MODE commit 74030a8, ``utils/MODE.py`` ``MODE_F.main``
(lines 277-381: amplitude set l. 303, weights l. 305 and 318, mixed image l. 320-326, sign
ascent and projection l. 341-345) and ``main.py`` ``Trainer.train`` (l. 430-445: the search
with the model in eval mode, then the ``beta`` mix of the real and the explored loss on one
forward of both; defaults l. 28-32). MODE-A, the
AdaIN variant, needs a pre-trained VGG encoder and decoder and is not implemented.

The uncertainty subset is spanned by Fourier amplitude spectra that share the image's
semantic factors (its phase). For every example x (label y) of the step's batch:

    A_0 = |F(x)|, phi = angle(F(x))            (2-D FFT over the spatial axes, per channel)
    A_j = |F(x_j)|, x_j drawn uniformly (with replacement) from the step's whole batch,
        j = 1 .. M - 1, M = ``mode_num_mix``   (l. 303; the per-domain branch l. 298-301 is
                                                commented out at this commit)
    w^0 = 1 / M (all j),  wn = w / (sum_j w_j + 1e-6)   (MODE_A's guard; MODE_F has none)
    x(w) = Re F^-1( ((1 - gamma) A_0 + gamma sum_j wn_j A_j) exp(i phi) )

``mode_steps`` (the code's ``move_step``) steps of signed gradient *ascent* on the
classification loss with the model fixed:

    w <- clip(w^0 + clip(w + mu sign(d CE(f(x(w)), y) / dw) - w^0, -1, 1), 0, 1)

then the model trains on both the real and the explored batch (one forward on the two):

    L = (1 - beta) CE(f(x), y) + beta CE(f(x(w)), y),   x(w) held fixed

defaults: ``move_step 10, gamma 1, num_mix 4, mu 0.05, beta 0.4`` (main.py l. 28-32, the
README command); one Adam(lr, weight_decay) as ERM (the code uses SGD + a cosine schedule on
pre-trained ResNets); the random ranges are choices made here (the code has no search).
Needs image inputs (H, W, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy


def explored_images(w, amp_set, phase, gamma):
    """x(w) f32[N, H, W, C] from the weights w f32[N, M], the amplitude set f32[N, M, H, W, C]
    (entry 0: the image's own) and the image's phase f32[N, H, W, C]."""
    wn = w / (w.sum(1, keepdims=True) + 1e-6)
    mixed = jnp.einsum("nm,nm...->n...", wn, amp_set)
    amp = (1.0 - gamma) * amp_set[:, 0] + gamma * mixed
    return jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * phase), axes=(1, 2))).astype(jnp.float32)


def ascent_step(w, grad, w0, mu):
    """The code's update: a signed step, then the projection onto |w - w0| <= 1 and [0, 1]."""
    w = w + mu * jnp.sign(grad)
    return jnp.clip(w0 + jnp.clip(w - w0, -1.0, 1.0), 0.0, 1.0)


def amplitude_set(x, key, num_mix: int):
    """(amp_set f32[N, M, H, W, C], phase f32[N, H, W, C]) for a batch x f32[N, H, W, C]: each
    example's own amplitude, then those of M - 1 examples drawn from the batch."""
    f = jnp.fft.fft2(x, axes=(1, 2))
    amp = jnp.abs(f)
    idx = jax.random.randint(key, (num_mix - 1, x.shape[0]), 0, x.shape[0])
    return jnp.concatenate([amp[:, None], jnp.moveaxis(amp[idx], 0, 1)], 1), jnp.angle(f)


def explore(logits_fn, x, y, amp_set, phase, gamma, mu, steps: int):
    """(x(w_final), [CE at each ascent step]) with ``logits_fn`` fixed."""
    n, m = amp_set.shape[:2]
    w0 = jnp.full((n, m), 1.0 / m, jnp.float32)
    loss_w = lambda w: cross_entropy(logits_fn(explored_images(w, amp_set, phase, gamma)), y)  # noqa: E731

    def body(w, _):
        loss, g = jax.value_and_grad(loss_w)(w)
        return ascent_step(w, g, w0, mu), loss

    w, losses = jax.lax.scan(body, w0, None, length=steps)
    return jax.lax.stop_gradient(explored_images(w, amp_set, phase, gamma)), losses


@register
class MODE(Algorithm):
    name = "mode"

    @classmethod
    def own_hparams(cls, small):
        return {"mode_steps": H.HParam(10, lambda r: int(r.choice([5, 10]))),
                "mode_num_mix": H.HParam(4, lambda r: int(r.choice([2, 4, 8]))),
                "mode_mu": H.HParam(0.05, lambda r: float(r.choice([0.01, 0.05, 0.1]))),
                "mode_gamma": H.HParam(1.0, lambda r: float(r.uniform(0.5, 1.0))),
                "mode_beta": H.HParam(0.4, lambda r: float(r.uniform(0.2, 0.6)))}

    def init(self, key, hp):
        if len(self.net.input_shape) != 3:
            raise ValueError(f"algorithm 'mode' needs image inputs (H, W, C); got input shape {self.net.input_shape}")
        return super().init(key, hp)

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        amp_set, phase = amplitude_set(x, key, self.static_hp("mode_num_mix"))
        fixed = jax.lax.stop_gradient(params)
        x_fake, search = explore(lambda z: self.logits(fixed, z), x, y, amp_set, phase,
                                 hp["mode_gamma"], hp["mode_mu"], self.static_hp("mode_steps"))
        logits = self.logits(params, jnp.concatenate([x, x_fake]))
        real, final = cross_entropy(logits[: k * b], y), cross_entropy(logits[k * b:], y)
        loss = (1.0 - hp["mode_beta"]) * real + hp["mode_beta"] * final
        return loss, {"loss": loss, "loss_real": real, "loss_explored": final,
                      "search_gain": search[-1] - search[0]}
