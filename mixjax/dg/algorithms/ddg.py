"""DDG, disentanglement-constrained domain generalisation (Zhang, Zhang, Zhang, Zhang & Li,
"Towards Principled Disentanglement for Domain Generalization", CVPR 2022, arXiv 2111.13839),
from the authors' DomainBed fork hlzhang109/DDG (commit b5cd182):
``algorithms.py`` class ``DDG`` (lines 1029-1324): ``forward`` (l. 1085-1122: semantic factors
from the featuriser, variation factors from the generator's encoder, decodes of swapped
factors), ``dis_update`` (l. 1124-1136), ``gen_update`` (l. 1138-1179: the primal step of the
DG stage), ``gan_update`` (l. 1181-1254: the generator pre-training stage), ``update``
(l. 1256-1315), ``step`` (l. 1320-1324: the dual step); ``hparams_registry.py`` l. 86-164
(MNIST branch: margin 0.025, recon_id_w 0.5, recon_xp_w 0.5, recon_x_w 0.5, eta 0.01, gan_w
1.0, lr_g 1e-4, lr_d 1e-4, weight_decay_g 5e-4); ``networks.py`` ``MsImageDis`` (l. 300-437:
LSGAN, R1 weight ``LAMBDA`` 0.01), ``VAEGen`` / ``Decoder`` (l. 512-546, 594-637: the MNIST
generator, 64-dim variation code, linear output); ``train.py`` l. 190-199, 236-239 (stage 1 loads the stage-0
generator and featuriser into a frozen copy; two minibatches a step); ``datasets.py``
l. 180-194, 306-309 (each example comes with a "positive": another example of its class).

Semantic encoder = the network's featuriser phi (the code's ``id_featurizer``), classifier w;
variation encoder E_v and decoder G form the generator. The rule, for two batches a, b with
labels y_a, y_b and positives p_a, p_b (same labels):

* stage 0, the first ``ddg_gen_steps`` steps (the code's ``--stage 0`` run): the generator
  learns to reconstruct from the stop-gradient semantic code and to make swapped decodes
  x_ba = G(E_v(b), sg phi(a)), x_ab = G(E_v(a), sg phi(b)) look real to an image discriminator D
  (LSGAN, ``MsImageDis.calc_dis_loss`` / ``calc_gen_loss`` / ``compute_grad2``):
      L_D = gan_w * sum_{(f, r) in ((x_ba, a), (x_ab, b))} [mean D(f)^2 + mean (D(r) - 1)^2
                                                         + 0.01 mean_i |d sum D(r) / d r_i|^2],
      L_gen = gan_w * 2 (mean (D(x_ba) - 1)^2 + mean (D(x_ab) - 1)^2)
              + recon_x_w * (|G(E_v(a), sg phi(a)) - a|_1 + |G(E_v(b), sg phi(b)) - b|_1);
  D takes its Adam(lr_d, weight_decay) step first on the detached fakes, then the generator its
  step against the updated D (the code's ``dis_update`` before ``gan_update``);
* stage 1 (the code's ``--stage 1`` run): at the switch a frozen copy (phi~, E_v~, G~) of the
  featuriser and the generator is taken and both Adams are re-created (a new run in the
  code); with x_ba = G~(E_v~(b), phi~(a)) (a's semantics, b's variation, label y_a) and
  x_ab = G~(E_v~(a), phi~(b)) (label y_b), per example r_a = mean |G(E_v(a), phi(p_a)) - a|,
      L = CE(a) + CE(b) + CE(p_a) + CE(p_b)
          + lambda' (mean relu(r_a - margin) + mean relu(r_b - margin))
          + recon_id_w (CE(w phi(x_ba), y_a) + CE(w phi(x_ab), y_b)),
      lambda' = clip(lambda + eta (mean r_a - margin), 0, 1)   (dual ascent on the constraint
                E r <= margin, taken before the primal step and used in it, as the code's
                ``step`` is called before the loss is formed),
  one Adam(lr, weight_decay) on (phi, w) and one Adam(lr_g, weight_decay_g, betas (0, 0.999))
  on (E_v, G), as the code's ``optimizer`` / ``optimizer_gen``.

Prediction: w(phi(x)) (the code's ``predict``).

Choices and simplifications (the code's generator is a convolutional VAE / AdaIN GAN trained
adversarially in a separate run):
* the generator is two MLPs (width ``GEN_WIDTH``, ``GEN_DEPTH`` layers): E_v on the grey image
  (the mean over channels, as the code's ``to_gray``; a flat input as is) to ``VAR_DIM`` = 64
  (the code's MNIST variation code), G on [E_v, phi] to the whole input (all channels; the
  code's MNIST decoder outputs one channel), linear output;
* D is an MLP on the whole input (width ``GEN_WIDTH``, ``GEN_DEPTH`` layers, one scale; the
  code's is a two-scale convolutional discriminator on one channel); stage 0 leaves out the cycle
  reconstruction (weight 0 until 20% of the steps, then warmed up) and the step-decay schedules;
* one run holds both stages: during stage 0 the network also takes ERM steps on a (the code's
  stage-0 run leaves the classifier idle and starts stage 1 from the loaded featuriser: an
  ImageNet ResNet, or for MNIST an untrained CNN), so the frozen semantic encoder is an ERM
  featuriser and no step of the budget is spent without training the classifier;
* b is a random in-batch permutation of a (the code draws a second minibatch) and the positive
  of an example is a random other example of the batch with its label (itself if it has none;
  the code fixes one per example when the dataset is built: a same-class example of the
  environment, for RotatedMNIST the same digit at another training angle). With b a
  permutation of a, the b-terms of the reconstruction and of the real CEs equal the a-terms; the
  sum keeps the code's weights.
``ddg_gen_steps`` defaults to 2500 (half of DomainBed's 5000 steps; the code's MNIST stages are
10000 steps each); a shorter run must lower it (``hparam_overrides.ddg_gen_steps=150``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy, reset_where
from mixjax.dg.networks import mlp

VAR_DIM = 64
GEN_WIDTH = 128
GEN_DEPTH = 3
R1_WEIGHT = 0.01   # MsImageDis.LAMBDA


def grey(x):
    """The variation encoder's input: images [n, H, W, C] -> channel mean; flat rows as is."""
    return x.mean(-1) if x.ndim == 4 else x


def pairs(key, y):
    """``(perm, pos)`` i32[n]: b = a[perm]; pos[i] = a random j != i with y[j] == y[i] (i if none)."""
    n = y.shape[0]
    k_perm, k_pos = jax.random.split(key)
    perm = jax.random.permutation(k_perm, n)
    same = (y[:, None] == y[None, :]) & ~jnp.eye(n, dtype=bool)
    alone = ~same.any(1)
    allowed = same | (alone[:, None] & jnp.eye(n, dtype=bool))
    u = jax.random.uniform(k_pos, (n, n))
    pos = jnp.argmax(jnp.where(allowed, u, -1.0), axis=1)
    return perm, pos


def l1_rows(recon, x):
    """Per-example mean |recon - x| (the code's ``recon_criterion(..., reduction=False)``)."""
    d = jnp.abs(recon - jax.lax.stop_gradient(x))
    return d.reshape(d.shape[0], -1).mean(1)


@register
class DDG(Algorithm):
    name = "ddg"

    @classmethod
    def own_hparams(cls, small):
        margin = (H.HParam(0.025, lambda r: 0.025) if small
                  else H.HParam(0.25, lambda r: float(r.choice([0.1, 0.25, 0.5, 0.75]))))
        return {
            "ddg_gen_steps": H.HParam(2500, lambda r: 2500),
            "ddg_margin": margin,
            "ddg_recon_id_w": H.HParam(0.5, lambda r: float(r.choice([0.1, 0.2, 0.5, 1.0]))),
            "ddg_recon_x_w": H.HParam(0.5, lambda r: float(r.choice([1.0, 2.0, 5.0, 10.0]))),
            "ddg_lambda0": H.HParam(0.5, lambda r: float(r.choice([1.0, 2.0, 5.0, 10.0]))),
            "ddg_eta": H.HParam(0.01, lambda r: 0.05),
            "ddg_lr_g": H.HParam(1e-4, lambda r: 10 ** r.uniform(-5, -3.5)),
            "ddg_weight_decay_g": H.HParam(5e-4, lambda r: 10 ** r.uniform(-6, -2)),
            "ddg_gan_w": H.HParam(1.0, lambda r: float(r.choice([0.5, 1.0, 2.0]))),
            "ddg_lr_d": H.HParam(1e-4, lambda r: 10 ** r.uniform(-5, -3.5)),
        }

    # ---- generator
    @property
    def n_features(self) -> int:
        return self.model.abstract.featurizer.n_outputs

    @property
    def n_grey(self) -> int:
        shape = self.net.input_shape
        return math.prod(shape[:-1]) if len(shape) == 3 else math.prod(shape)

    @property
    def encoder(self):
        return mlp(self.n_grey, VAR_DIM, GEN_WIDTH, GEN_DEPTH)

    @property
    def decoder(self):
        return mlp(VAR_DIM + self.n_features, math.prod(self.net.input_shape), GEN_WIDTH, GEN_DEPTH)

    @property
    def discriminator(self):
        return mlp(math.prod(self.net.input_shape), 1, GEN_WIDTH, GEN_DEPTH)

    def variation(self, gen, x):
        return self.encoder.merge(gen["enc"])(grey(x))

    def decode(self, gen, v, s):
        out = self.decoder.merge(gen["dec"])(jnp.concatenate([v, s], axis=1))
        return out.reshape(out.shape[0], *self.net.input_shape)

    def gen_tx(self, hp):
        return adam(hp["ddg_lr_g"], hp["ddg_weight_decay_g"], b1=0.0, b2=0.999)

    def disc_tx(self, hp):
        return adam(hp["ddg_lr_d"], hp["weight_decay"])

    def init(self, key, hp):
        k_net, k_enc, k_dec, k_dis = jax.random.split(key, 4)
        state = super().init(k_net, hp)
        gen = {"enc": self.encoder.init(k_enc), "dec": self.decoder.init(k_dec)}
        disc = self.discriminator.init(k_dis)
        return {**state, "gen": gen, "gen_opt": self.gen_tx(hp).init(gen),
                "disc": disc, "disc_opt": self.disc_tx(hp).init(disc),
                "pre": {"params": state["params"], "gen": gen},
                "lam": jnp.asarray(hp["ddg_lambda0"], jnp.float32)}

    # ---- stage 0's image GAN (LSGAN)
    def swapped(self, params, gen, x, perm):
        """Stage 0's (x_ba, x_ab): decodes of swapped variation codes, semantic code stopped."""
        z = jax.lax.stop_gradient(self.features(params, x))
        v = self.variation(gen, x)
        return self.decode(gen, v[perm], z), self.decode(gen, v, z[perm])

    def disc_loss(self, disc, hp, fakes, reals):
        """gan_w * sum over (fake, real) pairs of the LSGAN loss + 0.01 x R1 on the real batch."""
        d = lambda u: self.discriminator.merge(disc)(u)[:, 0]   # noqa: E731
        total = 0.0
        for fake, real in zip(fakes, reals):
            r1 = jax.grad(lambda u: d(u).sum())(real)
            total = total + (jnp.mean(d(fake) ** 2) + jnp.mean((d(real) - 1.0) ** 2)
                             + R1_WEIGHT * jnp.mean(jnp.sum(r1.reshape(r1.shape[0], -1) ** 2, axis=1)))
        return hp["ddg_gan_w"] * total

    def gen_adv(self, disc, fake):
        return 2.0 * jnp.mean((self.discriminator.merge(disc)(fake)[:, 0] - 1.0) ** 2)

    # ---- the two stages' objectives
    def objective(self, params, gen, pre, lam, hp, x, y, perm, pos, stage1, disc):
        """``(loss, aux)`` on the batch a = (x, y), b = a[perm], positives a[pos]; ``stage1``
        bool[] selects the DG stage's loss over the generator pre-training's (against the
        discriminator ``disc``)."""
        z = self.features(params, x)
        logits = self.classify(params, z)
        v = self.variation(gen, x)
        ce_a = cross_entropy(logits, y)
        # stage 0: reconstruction from the stop-gradient semantic code, swapped decodes against D
        # (+ ERM on a, this module's choice)
        rec0 = l1_rows(self.decode(gen, v, jax.lax.stop_gradient(z)), x)
        x_ba0, x_ab0 = self.swapped(params, gen, x, perm)
        adv = self.gen_adv(disc, x_ba0) + self.gen_adv(disc, x_ab0)
        loss0 = hp["ddg_gan_w"] * adv + hp["ddg_recon_x_w"] * (rec0.mean() + rec0[perm].mean()) + ce_a
        # stage 1: CE on a, b and their positives; hinge on the positives' reconstruction
        ce_pos = cross_entropy(logits[pos], y)
        r_a = l1_rows(self.decode(gen, v, z[pos]), x)
        r_b = r_a[perm]
        hinge = jax.nn.relu(r_a - hp["ddg_margin"]).mean() + jax.nn.relu(r_b - hp["ddg_margin"]).mean()
        lam_new = jnp.clip(lam + hp["ddg_eta"] * (jax.lax.stop_gradient(r_a.mean()) - hp["ddg_margin"]), 0.0, 1.0)
        # augmentations by the frozen pre-trained generator: swapped variation codes
        z_pre = self.features(pre["params"], x)
        v_pre = self.variation(pre["gen"], x)
        x_ba = jax.lax.stop_gradient(self.decode(pre["gen"], v_pre[perm], z_pre))        # label y
        x_ab = jax.lax.stop_gradient(self.decode(pre["gen"], v_pre, z_pre[perm]))        # label y[perm]
        gen_ce = cross_entropy(self.logits(params, x_ba), y) + cross_entropy(self.logits(params, x_ab), y[perm])
        ce_real = ce_a + cross_entropy(logits[perm], y[perm]) + ce_pos + cross_entropy(logits[pos][perm], y[perm])
        loss1 = ce_real + lam_new * hinge + hp["ddg_recon_id_w"] * gen_ce
        loss = jnp.where(stage1, loss1, loss0)
        return loss, {"loss": loss, "ce": ce_a, "recon": jnp.where(stage1, r_a.mean(), rec0.mean()),
                      "hinge": hinge, "gen_ce": gen_ce, "adv": adv, "lam": jnp.where(stage1, lam_new, lam)}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        step = state["step"].astype(jnp.float32)
        switch, stage1 = step == hp["ddg_gen_steps"], step >= hp["ddg_gen_steps"]
        tx, gtx = self.tx(hp), self.gen_tx(hp)
        pre = reset_where(switch, {"params": state["params"], "gen": state["gen"]}, state["pre"])
        opt = reset_where(switch, tx.init(state["params"]), state["opt"])
        gen_opt = reset_where(switch, gtx.init(state["gen"]), state["gen_opt"])
        perm, pos = pairs(key, y)
        # stage 0: the discriminator's step on the detached fakes (none in stage 1)
        fakes = jax.lax.stop_gradient(self.swapped(state["params"], state["gen"], x, perm))
        d_loss, g_disc = jax.value_and_grad(self.disc_loss)(state["disc"], hp, fakes, (x, x[perm]))
        disc, disc_opt = apply_updates(self.disc_tx(hp), g_disc, state["disc_opt"], state["disc"])
        disc, disc_opt = reset_where(stage1, (state["disc"], state["disc_opt"]), (disc, disc_opt))
        (g, g_gen), aux = jax.grad(self.objective, argnums=(0, 1), has_aux=True)(
            state["params"], state["gen"], pre, state["lam"], hp, x, y, perm, pos, stage1, disc)
        params, opt = apply_updates(tx, g, opt, state["params"])
        gen, gen_opt = apply_updates(gtx, g_gen, gen_opt, state["gen"])
        return {**state, "params": params, "opt": opt, "gen": gen, "gen_opt": gen_opt, "pre": pre,
                "disc": disc, "disc_opt": disc_opt, "lam": aux["lam"], "step": state["step"] + 1}, {
                    **aux, "d_loss": d_loss, "stage": stage1.astype(jnp.float32)}
