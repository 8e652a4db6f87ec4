"""MMLD: domain generalisation with a mixture of multiple latent domains (Matsuura & Harada,
AAAI 2020, arXiv 1911.07661): pseudo-domains found by clustering style features, and a
domain-adversarial network trained on the pseudo-domain labels instead of the true ones.
Reference: mil-tokyo/dg_mmld commit aef26b2: ``clustering/domain_split.py`` (``calc_mean_std``,
``compute_instance_stat``: per-channel mean and std of conv feature maps; ``domain_split``:
k-means on them), ``main/main.py`` l. 114-139 (re-clustering every ``clustering_step`` epochs,
the discriminator's class weights 1 / cluster size normalised to sum to the number of
clusters), ``train/general.py`` (one loss with a gradient reversal layer and entropy term,
their schedule), ``model/Discriminator.py`` (GRL + MLP), ``loss/EntropyLoss.py`` (HLoss),
``script/general.sh`` (3 clusters, entropy weight 1, GRL weight 1, ``--instance-stat``).

Per step, on the concatenated batch x (N = K b examples) with features z = phi(x):

    s_i = [mean_hw h_i, std_hw h_i]       (h = the featuriser's first block output, as ttss;
                                            the code concatenates these over all conv layers)
    pseudo-domain d_i = argmin_c ||s_i - c_c||^2 over D = ``mmld_domains`` centroids
    L = CE(w(z), y) + CE_omega(Disc(GRL_alpha(z)), d) + beta * H(softmax(w(z)))
    CE_omega = sum_i omega_{d_i} CE_i / sum_i omega_{d_i},  omega_c = D (1/n_c) / sum_c' (1/n_c')
    alpha = (2 / (1 + exp(-10 p)) - 1) * grl_weight,  beta = (same ramp) * entropy_weight

GRL_alpha is the identity forward and multiplies the gradient by -alpha, so one Adam step on
(phi, w, Disc) trains the discriminator to find the pseudo-domains and the featuriser to hide
them (the code's single optimiser step; DomainBed's DANN alternates instead).

Choices made here (the code clusters the whole training set with sklearn's KMeans, after a
PCA to 256 dims, before every epoch, and re-labels the clusters by a Hungarian matching to
the previous assignment): a compiled step sees one minibatch, so the clustering is
*online k-means* kept in the state (MacQueen's running means; Sculley 2010's mini-batch
k-means with per-centroid counts): centroids start at D random examples' styles of the first
batch; each step assigns the batch with the current centroids (those labels train the step),
then moves every centroid to the mean of all points assigned to it so far,
c <- c + (sum of the new points - n c) / (n_total). Centroids keep their identity from step
to step, so no re-matching is needed; n_c in omega are these running counts. No PCA (the style
vectors have 2 C <= 128 dims). The ramp's progress p = min(step / ``mmld_ramp_steps``, 1)
(the code: epoch / num_epochs); the discriminator is DomainBed's MLP (``mlp_width``,
``mlp_depth``) without the code's dropout; one Adam(lr, weight_decay) for all parts (the
code: SGD with lr multipliers 10 on the heads). Needs a convolutional featuriser.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy
from mixjax.dg.algorithms.ttss import early_map, style_stats
from mixjax.dg.networks import mlp


@jax.custom_vjp
def grad_reverse(z, alpha):
    return z


def _grl_fwd(z, alpha):
    return z, alpha


def _grl_bwd(alpha, g):
    return -alpha * g, jnp.zeros_like(alpha)


grad_reverse.defvjp(_grl_fwd, _grl_bwd)


def ramp(step, ramp_steps):
    """2 / (1 + exp(-10 p)) - 1 with p = min(step / ramp_steps, 1) (train/general.py)."""
    p = jnp.minimum(step / ramp_steps, 1.0)
    return 2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0


def online_kmeans(centroids, counts, s):
    """(labels i32[N], centroids', counts'): assign s f32[N, F] to the nearest of centroids
    f32[D, F], then move each centroid to the running mean of every point it has received."""
    d = ((s[:, None, :] - centroids[None]) ** 2).sum(-1)
    labels = jnp.argmin(d, axis=1)
    onehot = jax.nn.one_hot(labels, centroids.shape[0], dtype=s.dtype)
    n = onehot.sum(0)
    total = counts + n
    moved = centroids + (onehot.T @ s - n[:, None] * centroids) / jnp.maximum(total, 1.0)[:, None]
    return labels, moved, total


def cluster_weights(counts):
    """omega_c = D (1/n_c) / sum (1/n_c'), 0 for an empty cluster (main.py l. 129-130)."""
    inv = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
    return inv / inv.sum() * counts.shape[0]


def weighted_ce(logits, labels, weights):
    """torch's CrossEntropyLoss(weight=w): sum_i w_{l_i} CE_i / sum_i w_{l_i}."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    w = weights[labels]
    return (w * ce).sum() / w.sum()


def entropy(logits):
    """HLoss: mean over the batch of the softmax entropy."""
    logp = jax.nn.log_softmax(logits, -1)
    return -(jnp.exp(logp) * logp).sum(-1).mean()


@register
class MMLD(Algorithm):
    name = "mmld"
    needs_feature_map = True

    @classmethod
    def own_hparams(cls, small):
        return {"mmld_domains": H.HParam(3, lambda r: int(r.choice([2, 3, 4, 5]))),
                "mmld_grl_weight": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 0.5)),
                "mmld_entropy_weight": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 0.5)),
                "mmld_ramp_steps": H.HParam(5000.0, lambda r: 5000.0),
                "mlp_width": H.HParam(256, lambda r: int(2 ** r.uniform(6, 10))),
                "mlp_depth": H.HParam(3, lambda r: int(r.choice([3, 4, 5])))}

    @property
    def disc_module(self):
        n = self.model.abstract.featurizer.n_outputs
        return mlp(n, self.static_hp("mmld_domains"), self.static_hp("mlp_width"), self.static_hp("mlp_depth"))

    def style(self, params, x):
        mu, sig = style_stats(early_map(self.model.merge(params).featurizer, x))
        return jax.lax.stop_gradient(jnp.concatenate([mu, sig], -1))

    def init(self, key, hp):
        kn, kd = jax.random.split(key)
        params = self.model.init(kn)
        disc = self.disc_module.init(kd)
        f = jax.eval_shape(lambda x: self.style(params, x), jnp.zeros((1, *self.net.input_shape))).shape[-1]
        dom = self.static_hp("mmld_domains")
        return {"params": params, "disc": disc, "opt": self.tx(hp).init((params, disc)),
                "centroids": jnp.zeros((dom, f)), "counts": jnp.zeros((dom,)),
                "step": jnp.zeros((), jnp.int32)}

    def pseudo_domains(self, state, x, key):
        """(labels, centroids', counts') of the online k-means on the batch's styles."""
        s = self.style(state["params"], x)
        first = state["step"] == 0
        seed = s[jax.random.choice(key, s.shape[0], (state["centroids"].shape[0],), replace=False)]
        cents = jnp.where(first, seed, state["centroids"])
        counts = jnp.where(first, 0.0, state["counts"])
        return online_kmeans(cents, counts, s)

    def objective(self, trainable, hp, x, y, labels, counts, step):
        params, disc = trainable
        z = self.features(params, x)
        logits = self.classify(params, z)
        r = ramp(step, hp["mmld_ramp_steps"])
        d_logits = self.disc_module.merge(disc)(grad_reverse(z, r * hp["mmld_grl_weight"]))
        cls, dom, ent = cross_entropy(logits, y), weighted_ce(d_logits, labels, cluster_weights(counts)), entropy(logits)
        loss = cls + dom + r * hp["mmld_entropy_weight"] * ent
        return loss, {"loss": loss, "nll": cls, "disc_loss": dom, "entropy": ent}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        labels, cents, counts = self.pseudo_domains(state, x, key)
        trainable = (state["params"], state["disc"])
        grads, aux = jax.grad(self.objective, has_aux=True)(trainable, hp, x, y, labels, counts,
                                                            state["step"].astype(jnp.float32))
        (params, disc), opt = apply_updates(self.tx(hp), grads, state["opt"], trainable)
        used = (counts > 0).sum().astype(jnp.float32)
        return ({**state, "params": params, "disc": disc, "opt": opt, "centroids": cents, "counts": counts,
                 "step": state["step"] + 1}, {**aux, "clusters_used": used})
