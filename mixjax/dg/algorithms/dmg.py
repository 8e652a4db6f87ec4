"""DMG, domain-specific masks for generalisation (Chattopadhyay, Balaji & Hoffman, "Learning
to Balance Specificity and Invariance for In and Out of Domain Generalization", ECCV 2020,
arXiv 2008.12839), from the authors' code prithv1/DMG (commit 30339c0):
``models/supermasks.py`` ``SuperMask.forward`` (modes ``sample`` and ``softscale``, lines
38-73) and ``overlap_penalty`` (lines 118-130), ``trainers/subnetwork_supermask_trainer.py``
``train_epoch`` (the loss, lines 158-190) and ``evaluate`` (the test phase, lines 297-318),
``configs/PACS/supermask_training.yml`` (OVERLAP_LAMBDA 0.1, SPARSITY_LAMBDA 0,
MASK_INIT_SETTING random_uniform).

One mask-logit vector m_e in R^D per training env (uniform(0, 1) at init, as the code's
``torch.rand``) gates the features z = phi(x) in front of the classifier (the code's ``fc``
mask layer of its ResNets). Training, for an example of env e:

    s = sigmoid(m_e);  h ~ Bernoulli(s) (one draw per example);  mask = h + s - stop_grad(s)
    L = CE(w(z * mask), y) + lambda_overlap * mean_{e < e'} IoU(s_e, s_e')
    IoU(a, b) = (sum a b + 1e-6) / (sum (a + b - a b) + 1e-6)

one Adam (lr, weight_decay) over the network and the masks (the code has two Adams with the
same settings). Prediction (the code's test phase, ``softscale``): the logits averaged over
the training envs' masks, mean_e w(z * sigmoid(m_e)). The code's per-domain validation with
the example's own hard mask (``greedy``) is not reproduced: the evaluation here does not tell
a training env's position among the masks, so every env is predicted by the test rule.
``dmg_overlap`` is searched over 10^U(-2, 0) (this module's choice; the code gives none).
"""

import itertools

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy

SMOOTH = 1e-6


def overlap_penalty(probs):
    """Mean soft IoU over the pairs of rows of probs f32[K, D]."""
    pairs = list(itertools.combinations(range(probs.shape[0]), 2))
    if not pairs:
        return jnp.zeros(())
    ious = [(jnp.sum(probs[i] * probs[j]) + SMOOTH) / (jnp.sum(probs[i] + probs[j] - probs[i] * probs[j]) + SMOOTH)
            for i, j in pairs]
    return sum(ious) / len(pairs)


@register
class DMG(Algorithm):
    name = "dmg"

    @classmethod
    def own_hparams(cls, small):
        return {"dmg_overlap": H.HParam(0.1, lambda r: 10 ** r.uniform(-2, 0))}

    def init(self, key, hp):
        k_net, k_mask = jax.random.split(key)
        state = super().init(k_net, hp)
        d = self.model.abstract.featurizer.n_outputs
        masks = jax.random.uniform(k_mask, (self.num_envs, d))
        return {**state, "masks": masks, "mask_opt": self.tx(hp).init(masks)}

    def masked_loss(self, params, masks, hp, xs, ys, hard):
        """L for hard mask draws ``hard`` f32[K, b, D] (straight-through to sigmoid(masks))."""
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:])).reshape(k, b, -1)
        s = jax.nn.sigmoid(masks)[:, None, :]
        gate = hard + s - jax.lax.stop_gradient(s)
        logits = self.classify(params, (z * gate).reshape(k * b, -1))
        ce = cross_entropy(logits, ys.reshape(-1))
        overlap = overlap_penalty(jax.nn.sigmoid(masks))
        loss = ce + hp["dmg_overlap"] * overlap
        return loss, {"loss": loss, "ce": ce, "overlap": overlap}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        probs = jnp.broadcast_to(jax.nn.sigmoid(state["masks"])[:, None, :], (k, b, state["masks"].shape[1]))
        hard = jax.random.bernoulli(key, probs).astype(jnp.float32)
        (grads, mgrads), aux = jax.grad(self.masked_loss, argnums=(0, 1), has_aux=True)(
            state["params"], state["masks"], hp, xs, ys, hard)
        params, opt = apply_updates(self.tx(hp), grads, state["opt"], state["params"])
        masks, mask_opt = apply_updates(self.tx(hp), mgrads, state["mask_opt"], state["masks"])
        return {**state, "params": params, "opt": opt, "masks": masks, "mask_opt": mask_opt,
                "step": state["step"] + 1}, aux

    def predict(self, state, x):
        z = self.features(state["params"], x)
        s = jax.nn.sigmoid(state["masks"])                          # [K, D]
        logits = jax.vmap(lambda m: self.classify(state["params"], z * m))(s)
        return logits.mean(0)
