"""MEDIC, dualistic meta-learning for open-set domain generalisation (Wang et al., "Generalizable
Decision Boundaries: Dualistic Meta-Learning for Open Set Domain Generalization", ICCV 2023),
re-derived from zzwdx/MEDIC (commit d8356de): ``ml_open.py`` lines 246-363 (the training step),
370-437 (the open-set scores), ``loss/OVALoss.py`` lines 9-23, ``model/model.py`` lines 276-302
(the two heads).

Network: the featuriser ``f`` with the closed-set classifier ``g`` (C logits) and a one-vs-all
head ``h`` (2C outputs, Xavier-uniform gain 0.1, zero bias), read as ``[n, 2, C]``: channel 1
is "x is of class c", channel 0 "x is not". ``q = softmax over the 2 channels``.

    L(x, y) = CE(g f x, y) + OVA(h f x, y)
    OVA      = 0.5 * ( mean_n -log(q[n, 1, y_n] + 1e-8)
                      + mean_n max_{c != y_n} -log(q[n, 0, c] + 1e-8) )

The dualistic split, each step: one held-out domain ``d = step mod K`` (the code cycles it) and a
random class set ``S`` of ``(C - 1) // 3 + 1`` classes (the code's groups are single classes
when C <= 10). Meta-train sees the other domains on classes outside S and domain d on S;
meta-test the reverse (other domains on S, domain d outside S):

    L_tr(theta) = sum_{e != d} L(B_e[y not in S]) + L(B_d[y in S])
    L_te(theta) = L(B_{others}[y in S]) + 2 * L(B_d[y not in S])
    theta'      = theta - meta_lr * grad L_tr(theta)          (plain SGD, second order)
    theta      <- Adam(theta, grad_theta [L_tr(theta) + L_te(theta')])

``L(B[mask])`` is the mean of the per-row loss over the masked rows (0 if none).
Choices (the code draws class-filtered batches from per-class loaders; here each env's batch is
fixed, so the class split is a row mask over it):
  * every other domain is in meta-train (the code samples 2 of them: equal for K = 3);
  * meta-test pools the other domains' S-rows into one mean (the code concatenates half
    batches of i and j) and weighs domain d's non-S term by 2 (the code draws 2 batches);
  * the outer optimiser is the project's Adam (the code: SGD momentum 0.9, wd 5e-4, StepLR).
Open-set score (``ml_open.py`` 428-435): ``q[n, 1, argmax_c g f x]``, the OVA head's "known"
probability of the predicted class (:meth:`MEDIC.known_score`; ``mixjax.dg.openset`` scores it).
Hyperparameters: medic_meta_lr 0.01 (10^U(-3, -1)).
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates


def ova_rows(b_logits: jax.Array, y: jax.Array) -> jax.Array:
    """f32[n]: the per-row OVA loss of ``OVALoss`` (its batch mean is the code's loss)."""
    n, two_c = b_logits.shape
    q = jax.nn.softmax(b_logits.reshape(n, 2, two_c // 2), axis=1)
    onehot = jax.nn.one_hot(y, two_c // 2)
    pos = -(jnp.log(q[:, 1, :] + 1e-8) * onehot).sum(-1)
    neg = (-jnp.log(q[:, 0, :] + 1e-8) * (1 - onehot)).max(-1)
    return 0.5 * (pos + neg)


def known_prob(logits: jax.Array, b_logits: jax.Array) -> jax.Array:
    """f32[n]: the OVA head's "known" probability of the closed-set prediction."""
    n, c = logits.shape
    q1 = jax.nn.softmax(b_logits.reshape(n, 2, c), axis=1)[:, 1, :]
    return jnp.take_along_axis(q1, jnp.argmax(logits, -1)[:, None], axis=1)[:, 0]


def dualistic_masks(d: jax.Array, in_s: jax.Array, ys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row masks f32[K, b] from the held-out domain ``d`` and the class membership ``in_s`` bool[C]:
    (meta-train, meta-test of the other domains, meta-test of domain d)."""
    row_in = in_s[ys]
    is_d = (jnp.arange(ys.shape[0]) == d)[:, None]
    train = jnp.where(is_d, row_in, ~row_in)
    return train.astype(jnp.float32), (~is_d & row_in).astype(jnp.float32), (is_d & ~row_in).astype(jnp.float32)


def masked_mean(v: jax.Array, m: jax.Array) -> jax.Array:
    return (v * m).sum() / jnp.maximum(m.sum(), 1.0)


@register
class MEDIC(Algorithm):
    name = "medic"

    @classmethod
    def own_hparams(cls, small):
        return {"medic_meta_lr": H.HParam(0.01, lambda r: 10 ** r.uniform(-3, -1))}

    @property
    def n_classes(self) -> int:
        return self.net.num_classes

    def init(self, key, hp):
        kn, kh = jax.random.split(key)
        feat = self.model.abstract.featurizer.n_outputs
        c = self.n_classes
        limit = 0.1 * (6.0 / (feat + 2 * c)) ** 0.5
        head = {"w": jax.random.uniform(kh, (feat, 2 * c), jnp.float32, -limit, limit),
                "b": jnp.zeros((2 * c,), jnp.float32)}
        params = {"net": self.model.init(kn), "ova": head}
        return {"params": params, "opt": self.tx(hp).init(params), "step": jnp.zeros((), jnp.int32)}

    def heads(self, params, x):
        """(closed-set logits f32[n, C], OVA logits f32[n, 2C])."""
        z = self.features(params["net"], x)
        return self.classify(params["net"], z), z @ params["ova"]["w"] + params["ova"]["b"]

    def row_losses(self, params, xs, ys):
        """f32[K, b]: CE + OVA per row."""
        k, b = ys.shape
        logits, b_logits = self.heads(params, xs.reshape(k * b, *xs.shape[2:]))
        y = ys.reshape(-1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return (ce + ova_rows(b_logits, y)).reshape(k, b)

    def split(self, state, ys, key):
        """(held-out domain d, class membership in_s bool[C]) of this step."""
        c = self.n_classes
        chosen = jax.random.permutation(key, c)[: (c - 1) // 3 + 1]
        return state["step"] % ys.shape[0], jnp.zeros((c,), bool).at[chosen].set(True)

    def objective(self, params, hp, xs, ys, d, in_s):
        m_tr, m_te_o, m_te_d = dualistic_masks(d, in_s, ys)
        per_env = lambda r, m: ((r * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)).sum()  # noqa: E731
        l_tr = lambda p: per_env(self.row_losses(p, xs, ys), m_tr)  # noqa: E731
        tr, g = jax.value_and_grad(l_tr)(params)
        fast = jax.tree.map(lambda w, gw: w - hp["medic_meta_lr"] * gw, params, g)
        r = self.row_losses(fast, xs, ys)
        te = masked_mean(r, m_te_o) + 2.0 * masked_mean(r, m_te_d)
        return tr + te, {"loss": tr + te, "meta_train": tr, "meta_test": te}

    def update(self, hp, state, xs, ys, key):
        d, in_s = self.split(state, ys, key)
        grads, aux = jax.grad(self.objective, has_aux=True)(state["params"], hp, xs, ys, d, in_s)
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], state["params"])
        return {**state, "params": params, "opt": opt, "step": state["step"] + 1}, aux

    def predict(self, state, x):
        return self.heads(state["params"], x)[0]

    def known_score(self, state, x):
        """f32[n]: the open-set score, high for a known class (``ml_open.py`` 428-435)."""
        return known_prob(*self.heads(state["params"], x))
