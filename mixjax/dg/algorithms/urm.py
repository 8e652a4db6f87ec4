"""URM, uniform risk minimisation (Krishnamachari et al., "Uniformly distributed feature
representations for fair and robust learning", TMLR 2024, openreview PgLbS5yp8n), DomainBed's
form (facebookresearch/DomainBed ``domainbed/algorithms.py`` ``URM``, commit b93c22a).

The featuriser's output goes through an activation a (``urm_generator_output``: tanh, relu or
sigmoid; DomainBed sets ``featurizer.activation``), so features z = a(phi(x)) lie in [l, u]
(tanh: [-1, 1], relu/sigmoid: [0, 1]). A discriminator D (Linear(D, 100) - LeakyReLU(0.01) -
``urm_discriminator_hidden_layers`` x [Linear(100, 100) - LeakyReLU] - Linear(100, 1)) tells
uniform noise n ~ U[l, u)^D ("real", label 1) from features ("fake", label 0). With
BCE(s, t) = mean[softplus(s) - s t] (``BCEWithLogitsLoss``) and lambda = urm_adv_lambda:

1. generator: L = CE(w(z), y) + lambda * BCE(D(z), 1); one Adam(lr, weight_decay) step on (phi, w);
2. discriminator, on the features of step 1 (before that step, detached):
   L_D = BCE(D(n), t_1) + lambda * BCE(D(stopgrad z), t_0), t_1 ~ U[1 - s, 1], t_0 ~ U[0, s]
   per example (s = urm_discriminator_label_smoothing; s = 0 gives DomainBed's hard labels);
   one step of Adam(urm_discriminator_lr, weight_decay) (or SGD momentum 0.9 with ``sgd``).

Prediction: w(a(phi(x))). Reported: ``loss`` (step 1) and ``disc_loss``.
Hyperparameters (``hparams_registry.py``): urm 'adversarial' (only choice), urm_adv_lambda 0.1
(U(0, 0.2)), urm_discriminator_label_smoothing 0 (U(0, 0)), urm_discriminator_optimizer 'adam'
(only choice), urm_discriminator_hidden_layers 1 (choice {1, 2, 3}), urm_generator_output 'tanh'
(choice {tanh, relu}), urm_discriminator_lr 1e-3 (10^U(-5.5,-3.5)) on small datasets,
5e-5 (10^U(-6,-4.5)) otherwise. String values are static (``hparams.CHOICES``).
"""

import jax
import jax.numpy as jnp
import optax

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy

HIDDEN = 100
ACTIVATIONS = {"tanh": (jnp.tanh, -1.0, 1.0), "relu": (jax.nn.relu, 0.0, 1.0), "sigmoid": (jax.nn.sigmoid, 0.0, 1.0)}


def init_discriminator(key, d: int, hidden_layers: int):
    init = jax.nn.initializers.lecun_normal()  # flax's Linear default
    dims = [d] + [HIDDEN] * (hidden_layers + 1) + [1]
    keys = jax.random.split(key, len(dims) - 1)
    return [{"w": init(kk, (a, b), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
            for kk, a, b in zip(keys, dims[:-1], dims[1:])]


def discriminator(params, z):
    """Logits f32[n] of DomainBed's URM discriminator."""
    for layer in params[:-1]:
        z = jax.nn.leaky_relu(z @ layer["w"] + layer["b"], 0.01)
    return (z @ params[-1]["w"] + params[-1]["b"])[:, 0]


def bce(logits, targets):
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean()


def discriminator_loss(disc, feats, noise, true_y, fake_y, adv_lambda):
    return bce(discriminator(disc, noise), true_y) + adv_lambda * bce(discriminator(disc, feats), fake_y)


@register
class URM(Algorithm):
    name = "urm"

    @classmethod
    def own_hparams(cls, small):
        lr = (H.HParam(1e-3, lambda r: 10 ** r.uniform(-5.5, -3.5)) if small
              else H.HParam(5e-5, lambda r: 10 ** r.uniform(-6, -4.5)))
        return {
            "urm": H.HParam("adversarial", lambda r: str(r.choice(["adversarial"]))),
            "urm_adv_lambda": H.HParam(0.1, lambda r: float(r.uniform(0, 0.2))),
            "urm_discriminator_label_smoothing": H.HParam(0, lambda r: float(r.uniform(0, 0))),
            "urm_discriminator_optimizer": H.HParam("adam", lambda r: str(r.choice(["adam"]))),
            "urm_discriminator_hidden_layers": H.HParam(1, lambda r: int(r.choice([1, 2, 3]))),
            "urm_generator_output": H.HParam("tanh", lambda r: str(r.choice(["tanh", "relu"]))),
            "urm_discriminator_lr": lr,
        }

    def _choice(self, name: str) -> str:
        return H.CHOICES[name][self.static_hp(name)]

    @property
    def activation(self):
        return ACTIVATIONS[self._choice("urm_generator_output")]

    def features(self, params, x):
        return self.activation[0](super().features(params, x))

    def logits(self, params, x):
        return self.classify(params, self.features(params, x))

    def disc_tx(self, hp):
        if self._choice("urm_discriminator_optimizer") == "sgd":
            return optax.chain(optax.add_decayed_weights(hp["weight_decay"]),
                               optax.sgd(hp["urm_discriminator_lr"], momentum=0.9))
        return adam(hp["urm_discriminator_lr"], hp["weight_decay"])

    def init(self, key, hp):
        k_net, k_d = jax.random.split(key)
        state = super().init(k_net, hp)
        disc = init_discriminator(k_d, self.model.abstract.featurizer.n_outputs,
                                  self.static_hp("urm_discriminator_hidden_layers"))
        return {**state, "disc": disc, "disc_opt": self.disc_tx(hp).init(disc)}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        lam = hp["urm_adv_lambda"]

        def gen_loss(p):
            z = self.features(p, x)
            ce = cross_entropy(self.classify(p, z), y)
            return ce + lam * bce(discriminator(state["disc"], z), jnp.ones(z.shape[0])), z

        (loss, z), g = jax.value_and_grad(gen_loss, has_aux=True)(state["params"])
        params, opt = apply_updates(self.tx(hp), g, state["opt"], state["params"])

        kn, kt, kf = jax.random.split(key, 3)
        _, lo, hi = self.activation
        noise = (hi - lo) * jax.random.uniform(kn, z.shape) + lo
        s = hp["urm_discriminator_label_smoothing"]
        true_y = s * jax.random.uniform(kt, (z.shape[0],)) + 1 - s
        fake_y = s * jax.random.uniform(kf, (z.shape[0],))
        d_loss, g_d = jax.value_and_grad(discriminator_loss)(
            state["disc"], jax.lax.stop_gradient(z), noise, true_y, fake_y, lam)
        disc, disc_opt = apply_updates(self.disc_tx(hp), g_d, state["disc_opt"], state["disc"])
        new = {**state, "params": params, "opt": opt, "disc": disc, "disc_opt": disc_opt, "step": state["step"] + 1}
        return new, {"loss": loss, "disc_loss": d_loss}
