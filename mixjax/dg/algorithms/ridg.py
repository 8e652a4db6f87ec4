"""RIDG, rationale invariance (Chen et al., "Domain generalization via rationale invariance",
ICCV 2023), the authors' DomainBed form (liangchen527/RIDG ``domainbed/algorithms.py`` ``RIDG``
and ``hparams_registry.py``, commit 34501b2).

With features f = phi(x) f32[N, D] and the linear head's weights W f32[C, D], the rationale of
example n is the matrix R_n[i, d] = W[i, d] f[n, d] (its logit for class i is sum_d R_n[i, d]
+ bias). A bank B f32[C, C, D] keeps a moving average of each class's mean rationale; for
every class c present in the batch (members S_c):

    mean_c = (1/|S_c|) sum_{n in S_c} R_n
    B_c <- mean_c on the class's first appearance, else (1 - momentum) B_c + momentum mean_c
    L = CE + ridg_reg * sum_{c present} (1/(C |S_c|)) sum_{n in S_c} ||R_n - stopgrad(B_c)||_F^2

(the bank is updated *before* it is used, so the current batch is in it).
Hyperparameters: momentum 0.001 (10^U(-4,-1)), ridg_reg 0.01 (10^U(-2,-1)).
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy


def rationales(f, w):
    """R f32[N, C, D] with R[n, i, d] = w[i, d] f[n, d]; f f32[N, D], w f32[C, D]."""
    return f[:, None, :] * w[None, :, :]


def ridg_loss_and_bank(r, y, bank, fresh, momentum):
    """(rationale loss, new bank, new fresh flags); r f32[N, C, D], bank f32[C, C, D], fresh bool[C]."""
    num_classes = bank.shape[0]
    onehot = jax.nn.one_hot(y, num_classes, dtype=r.dtype)  # [N, C]
    counts = onehot.sum(0)
    present = counts > 0
    mean = jnp.einsum("nc,nid->cid", onehot, r) / jnp.maximum(counts, 1)[:, None, None]
    moved = (1 - momentum) * bank + momentum * mean
    new_bank = jnp.where(present[:, None, None], jnp.where(fresh[:, None, None], mean, moved), bank)
    target = jax.lax.stop_gradient(new_bank)[y]  # [N, C, D]: each example's class bank
    per_example = ((r - target) ** 2).sum(-1).mean(-1)  # sum over D, mean over the C rows
    loss = (onehot * per_example[:, None]).sum(0) / jnp.maximum(counts, 1)
    return loss.sum(), jax.lax.stop_gradient(new_bank), fresh & ~present


@register
class RIDG(Algorithm):
    name = "ridg"

    @classmethod
    def own_hparams(cls, small):
        return {
            "momentum": H.HParam(0.001, lambda r: 10 ** r.uniform(-4, -1)),
            "ridg_reg": H.HParam(0.01, lambda r: 10 ** r.uniform(-2, -1)),
        }

    def init(self, key, hp):
        state = super().init(key, hp)
        c, d = self.net.num_classes, self.model.abstract.featurizer.n_outputs
        return {**state, "bank": jnp.zeros((c, c, d)), "fresh": jnp.ones((c,), bool)}

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        y = ys.reshape(-1)
        f = self.features(params, xs.reshape(k * b, *xs.shape[2:]))
        logits = self.classify(params, f)
        w = self.model.merge(params).classifier.kernel[...].T  # torch's weight layout [C, D]
        rat, bank, fresh = ridg_loss_and_bank(rationales(f, w), y, state["bank"], state["fresh"], hp["momentum"])
        ce = cross_entropy(logits, y)
        loss = ce + hp["ridg_reg"] * rat
        return loss, {"loss": loss, "nll": ce, "rationale": rat, "bank": bank, "fresh": fresh}

    carry = ("bank", "fresh")
