"""CCFP, cross contrasting feature perturbation (Li, Zhang, Huang & Zhang, ICCV 2023, arXiv
2307.12502), the authors' DomainBed code (hackmebroo/CCFP, commit 10b0dfc: ``algorithms.py``
``CCFP``, ``networks.py`` ``LDP``, ``MNIST_CNN_tea``, ``ResNet_tea``, ``hparams_registry.py``).

A student network f_s and a teacher f_t of the same architecture (independent
initialisations) whose featuriser inserts a learnable domain perturbation (LDP) after
stages k = 0..S-1, on the per-example, per-channel statistics of the feature map h:

    mu, sigma = mean_{HW} h, sqrt(var_{HW, unbiased} h + 1e-6)
    LDP(h) = (h - mu) / sigma * (sigma + gamma) + (mu + beta)      (gamma, beta init 0)

One step on the concatenated env batches (x, y), in the code's order:

1. L_s = CE(f_s(x), y) + lambda_sem MSE(f_s(x), sg f_t(x));  Adam_s step on the student;
2. L_t = CE(f_t(x), y) + lambda_sem MSE(sg f_s(x), f_t(x));  Adam_t step on the teacher
   (its optimiser holds the teacher's parameters *including* the LDP's gamma, beta);
   both losses are taken at the parameters from before step 1;
3. with the updated networks, taps h_k (stage outputs, the teacher's after its LDP),
       L_LD = -lambda_dis sum_k || gram(sg h_k^s) - gram(h_k^t) ||_F,
       gram(h)[n] = h_n^T h_n / (C H W)   (h_n as an [HW, C] matrix; one norm over the batch),
   and Adam_LD(lr, no weight decay) on gamma, beta only: the perturbation is trained to
   *increase* the teacher's style distance from the student.

Prediction: the teacher, with its perturbations on. Adam_s and Adam_t are
Adam(lr, weight_decay). Taps: MNIST_CNN - after the first three conv/ReLU/GroupNorm blocks
(LDP after each; the code's ``MNIST_CNN`` branch); mixjax's ResNet - after the stem and after
every stage but the last (the code's ResNet taps the stem conv, the max-pool, layer1..3; the
small GroupNorm ResNet has no max-pool, so this is the analogue). The MLP featuriser has no
feature maps; CCFP raises for it. Hyperparameters: lambda_sem 1.0 (10^U(-1,1)), lambda_dis
1.0 (10^U(-1,1)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy
from mixjax.dg.networks import NetSpec
from mixjax.models.cnn import MNISTCNN
from mixjax.models.resnet import ResNet


def ldp(h, gamma, beta, eps=1e-6):
    """LDP on channels-last h f32[N, H, W, C]; gamma, beta f32[C]."""
    mu = h.mean(axis=(1, 2), keepdims=True)
    sigma = jnp.sqrt(h.var(axis=(1, 2), ddof=1, keepdims=True) + eps)
    return (h - mu) / sigma * (sigma + gamma) + (mu + beta)


def gram(h):
    """f32[N, C, C]: h_n^T h_n / (C H W) for channels-last h f32[N, H, W, C]."""
    n, hh, ww, c = h.shape
    f = h.reshape(n, hh * ww, c)
    return jnp.einsum("npc,npd->ncd", f, f) / (c * hh * ww)


def style_distance(student_taps, teacher_taps):
    """sum_k || gram(sg s_k) - gram(t_k) ||_F (the code's ``F_distance`` of the Gram matrices)."""
    return sum(jnp.sqrt(((gram(jax.lax.stop_gradient(s)) - gram(t)) ** 2).sum()) for s, t in zip(student_taps, teacher_taps))


def tapped_features(featurizer, x, blocks_per_stage: int = 1, perts=None):
    """(features, taps) of mixjax's MNISTCNN / ResNet; ``perts`` = [(gamma, beta)] inserts LDPs."""
    taps = []

    def tap(h):
        if perts is not None:
            h = ldp(h, *perts[len(taps)])
        taps.append(h)
        return h

    if isinstance(featurizer, MNISTCNN):
        for i, (conv, norm) in enumerate(zip(featurizer.convs, featurizer.norms)):
            x = norm(jax.nn.relu(conv(x)))
            if i < 3:
                x = tap(x)
        return jnp.mean(x, axis=(1, 2)), taps
    if isinstance(featurizer, ResNet):
        x = tap(jax.nn.relu(featurizer.stem_norm(featurizer.stem(x))))
        blocks = list(featurizer.blocks)
        for i, block in enumerate(blocks):
            x = block(x)
            if (i + 1) % blocks_per_stage == 0 and i + 1 < len(blocks):
                x = tap(x)
        return jnp.mean(x, axis=(1, 2)), taps
    raise ValueError(f"CCFP needs a convolutional featuriser (cnn or resnet), got {type(featurizer).__name__}")


def tap_widths(net: NetSpec) -> tuple[int, ...]:
    """Channel count at each LDP / tap point."""
    if net.kind == "cnn":
        return tuple(net.cnn_widths[:3])
    return (net.resnet_widths[0],) + tuple(net.resnet_widths[:-1])


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class CCFP(Algorithm):
    name = "ccfp"

    def __post_init__(self):
        if self.net.kind == "mlp":
            raise ValueError("ccfp perturbs the statistics of convolutional feature maps; "
                             "use featurizer 'cnn' or 'resnet' (the MLP featuriser has none)")

    @classmethod
    def own_hparams(cls, small):
        return {
            "lambda_sem": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
            "lambda_dis": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
        }

    def init(self, key, hp):
        k_s, k_t = jax.random.split(key)
        params = self.model.init(k_s)
        widths = tap_widths(self.net)
        teacher = {"net": self.model.init(k_t),
                   "ldp": [(jnp.zeros((w,)), jnp.zeros((w,))) for w in widths]}
        return {"params": params, "opt": self.tx(hp).init(params), "teacher": teacher,
                "teacher_opt": self.tx(hp).init(teacher), "ldp_opt": adam(hp["lr"]).init(teacher["ldp"]),
                "step": jnp.zeros((), jnp.int32)}

    def student_forward(self, params, x):
        net = self.model.merge(params)
        z, taps = tapped_features(net.featurizer, x, self.net.resnet_blocks)
        return net.classifier(z), taps

    def teacher_forward(self, teacher, x):
        net = self.model.merge(teacher["net"])
        z, taps = tapped_features(net.featurizer, x, self.net.resnet_blocks, teacher["ldp"])
        return net.classifier(z), taps

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        params, teacher = state["params"], state["teacher"]
        logits_t0 = jax.lax.stop_gradient(self.teacher_forward(teacher, x)[0])
        logits_s0 = jax.lax.stop_gradient(self.student_forward(params, x)[0])

        def student_loss(p):
            logits = self.student_forward(p, x)[0]
            ce = cross_entropy(logits, y)
            return ce + hp["lambda_sem"] * ((logits - logits_t0) ** 2).mean(), ce

        def teacher_loss(t):
            logits = self.teacher_forward(t, x)[0]
            ce = cross_entropy(logits, y)
            return ce + hp["lambda_sem"] * ((logits_s0 - logits) ** 2).mean(), ce

        (_, ce_s), g_s = jax.value_and_grad(student_loss, has_aux=True)(params)
        (_, ce_t), g_t = jax.value_and_grad(teacher_loss, has_aux=True)(teacher)
        params, opt = apply_updates(self.tx(hp), g_s, state["opt"], params)
        teacher, teacher_opt = apply_updates(self.tx(hp), g_t, state["teacher_opt"], teacher)

        s_taps = self.student_forward(params, x)[1]

        def ld_loss(perts):
            t_taps = self.teacher_forward({**teacher, "ldp": perts}, x)[1]
            return -hp["lambda_dis"] * style_distance(s_taps, t_taps)

        l_ld, g_ld = jax.value_and_grad(ld_loss)(teacher["ldp"])
        perts, ldp_opt = apply_updates(adam(hp["lr"]), g_ld, state["ldp_opt"], teacher["ldp"])
        new = {**state, "params": params, "opt": opt, "teacher": {**teacher, "ldp": perts},
               "teacher_opt": teacher_opt, "ldp_opt": ldp_opt, "step": state["step"] + 1}
        return new, {"loss": ce_s, "loss_teacher": ce_t, "loss_ld": l_ld}

    def predict(self, state, x):
        return self.teacher_forward(state["teacher"], x)[0]
