"""ADRMX, additive disentanglement of domain features with remix loss (Demirel et al.,
arXiv 2308.06624), DomainBed's form (facebookresearch/DomainBed ``domainbed/algorithms.py``
``ADRMX``, ``lib/misc.py`` ``SupConLossLambda``, commit b93c22a).

Networks: label and domain featurisers phi_l, phi_d; z_l = phi_l(x), z_d = phi_d(x),
z = z_l - z_d; nonlinear heads (Linear(D, D/2)-ReLU-Linear(D/2, D/4)-ReLU-Linear(D/4, out)) c_1, c_2
(classes) and c_d (envs); a discriminator D = MLP(D -> K envs, mlp_width, mlp_depth). e = env labels.

Update count t (from 1): if t mod (1 + d_steps_per_g_step) < d_steps_per_g_step, a discriminator
step: Adam on D of L_D = CE(D(z), e). Otherwise a generator step, Adam on (phi_l, phi_d, c_1, c_2,
c_d) of

    L = CE(c_1(z_l), y) + CE(c_2(z), y) + dclf_lambda CE(c_d(z_d), e) + rmxd_lambda L_rmx
        + cnt_lambda (SupCon(z_l) + SupCon(z)) - disc_lambda CE(D(z), e).

Both Adams: (lr, betas (beta1, 0.9)), no weight decay. Prediction: c_1(phi_l(x)).

SupCon (``SupConLossLambda``, lambda 0.5, temperature 0.07): with s_ij = <z_i, z_j> / (|z_i| |z_j| T),
weights w_ij = 0.5 for pairs in the same env, 0.5 for pairs in different envs, positives P_i =
{j != i: y_j = y_i}, negatives N_i = {j: y_j != y_i},

    den_i = sum_{j in P_i u N_i} w_ij exp(s_ij) + 1e-5,
    l_i = (1/|P_i|) sum_{j in P_i} log(w_ij exp(s_ij) / den_i + 1e-5),
    SupCon = -sum_{i: P_i nonempty} l_i / (n - #{i: P_i empty} + 1)     (the "+ 1" is DomainBed's).

Remix, as the code runs: for each class c with n_c >= 2 members, (i, j) = the first two entries
of a random permutation of range(n_c) - positions, used directly as batch indices (not the
class members' indices) - and L_rmx = (1/C) sum_c CE(c_1(z_i + z_d,j), y_i).

Hyperparameters (``hparams_registry.py``, each a single choice there): cnt_lambda 1, dclf_lambda 1,
disc_lambda 0.75, rmxd_lambda 1, d_steps_per_g_step 2, beta1 0.5, mlp_width 256, mlp_depth 9
(choice {8, 9, 10}), mlp_dropout 0 (not implemented); lr 3e-3 (choice {5e-4, 1e-3, 2e-3, 3e-3})
on small datasets, 3e-5 (choice {2e-5, 3e-5, 4e-5, 5e-5}) otherwise. ``weight_decay`` is drawn
as for every algorithm but ADRMX's optimisers do not use it.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, adam, apply_updates, cross_entropy
from mixjax.dg.networks import Functional, NetSpec, mlp

SUPCON_LAMBDA, SUPCON_T = 0.5, 0.07


class NonlinearClassifier(nnx.Module):
    """DomainBed ``networks.Classifier(is_nonlinear=True)``."""

    def __init__(self, d: int, out: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(d, d // 2, rngs=rngs), nnx.Linear(d // 2, d // 4, rngs=rngs),
                                nnx.Linear(d // 4, out, rngs=rngs)])

    def __call__(self, x):
        x = jax.nn.relu(self.layers[0](x))
        return self.layers[2](jax.nn.relu(self.layers[1](x)))


class ADRMXNetwork(nnx.Module):
    def __init__(self, spec: NetSpec, num_envs: int, *, rngs: nnx.Rngs):
        self.featurizer_label = spec.build(rngs).featurizer
        self.featurizer_domain = spec.build(rngs).featurizer
        d = self.featurizer_label.n_outputs
        self.classifier_label_1 = NonlinearClassifier(d, spec.num_classes, rngs=rngs)
        self.classifier_label_2 = NonlinearClassifier(d, spec.num_classes, rngs=rngs)
        self.classifier_domain = NonlinearClassifier(d, num_envs, rngs=rngs)


@functools.lru_cache(maxsize=64)
def adrmx_network(spec: NetSpec, num_envs: int) -> Functional:
    return Functional(lambda rngs: ADRMXNetwork(spec, num_envs, rngs=rngs))


def supcon_lambda(z, y, d, lam: float = SUPCON_LAMBDA, temperature: float = SUPCON_T):
    """DomainBed ``SupConLossLambda(lamda)(z, y, d)``, vectorised; z f32[n, D]."""
    n = z.shape[0]
    zn = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # F.normalize
    e = jnp.exp(zn @ zn.T / temperature)
    same_y, same_d = y[:, None] == y[None, :], d[:, None] == d[None, :]
    w = jnp.where(same_d, lam, 1 - lam)
    pos = same_y & ~jnp.eye(n, dtype=bool)
    den = (w * e * (pos | ~same_y)).sum(1) + 1e-5
    n_pos = pos.sum(1)
    log_frac = jnp.log(w * e / den[:, None] + 1e-5)
    valid = n_pos > 0
    per_anchor = jnp.where(valid, (log_frac * pos).sum(1) / jnp.maximum(n_pos, 1), 0.0)
    return -per_anchor.sum() / (n - (~valid).sum() + 1)


def remix_pairs(key, y, num_classes: int):
    """(i, j, valid) per class: the first two entries of a random permutation of range(n_c)."""
    counts = jnp.bincount(y, length=num_classes)
    k1, k2 = jax.random.split(key)
    i = jax.random.randint(k1, (num_classes,), 0, jnp.maximum(counts, 1))
    j = jax.random.randint(k2, (num_classes,), 0, jnp.maximum(counts - 1, 1))
    j = j + (j >= i)  # distinct from i
    return i, j, counts >= 2


@register
class ADRMX(Algorithm):
    name = "adrmx"

    @classmethod
    def hparam_space(cls, small):
        space = {**H.common_space(small), **cls.own_hparams(small)}
        space["lr"] = (H.HParam(3e-3, lambda r: float(r.choice([5e-4, 1e-3, 2e-3, 3e-3]))) if small
                       else H.HParam(3e-5, lambda r: float(r.choice([2e-5, 3e-5, 4e-5, 5e-5]))))
        return space

    @classmethod
    def own_hparams(cls, small):
        return {
            "cnt_lambda": H.HParam(1.0, lambda r: float(r.choice([1.0]))),
            "dclf_lambda": H.HParam(1.0, lambda r: float(r.choice([1.0]))),
            "disc_lambda": H.HParam(0.75, lambda r: float(r.choice([0.75]))),
            "rmxd_lambda": H.HParam(1.0, lambda r: float(r.choice([1.0]))),
            "d_steps_per_g_step": H.HParam(2, lambda r: int(r.choice([2]))),
            "beta1": H.HParam(0.5, lambda r: float(r.choice([0.5]))),
            "mlp_width": H.HParam(256, lambda r: int(r.choice([256]))),
            "mlp_depth": H.HParam(9, lambda r: int(r.choice([8, 9, 10]))),
            "mlp_dropout": H.HParam(0.0, lambda r: float(r.choice([0]))),
        }

    @property
    def model(self) -> Functional:
        return adrmx_network(self.net, self.num_envs)

    @property
    def disc_module(self) -> Functional:
        d = self.model.abstract.featurizer_label.n_outputs
        return mlp(d, self.num_envs, self.static_hp("mlp_width"), self.static_hp("mlp_depth"))

    def tx(self, hp):
        return adam(hp["lr"], 0.0, b1=hp["beta1"], b2=0.9)

    def init(self, key, hp):
        k_net, k_d = jax.random.split(key)
        params, disc = self.model.init(k_net), self.disc_module.init(k_d)
        return {"params": params, "disc": disc, "opt": self.tx(hp).init(params), "disc_opt": self.tx(hp).init(disc),
                "step": jnp.zeros((), jnp.int32)}

    def predict(self, state, x):
        net = self.model.merge(state["params"])
        return net.classifier_label_1(net.featurizer_label(x))

    def losses(self, params, disc, hp, x, y, e, key):
        """(generator loss, metrics) with D fixed; metrics["loss_disc"] = CE(D(z), e)."""
        net = self.model.merge(params)
        z_l, z_d = net.featurizer_label(x), net.featurizer_domain(x)
        z = z_l - z_d
        disc_loss = cross_entropy(self.disc_module.merge(disc)(z), e)
        i, j, valid = remix_pairs(key, y, self.net.num_classes)
        remix_logits = net.classifier_label_1(z[i] + z_d[j])
        remix_ce = optax.softmax_cross_entropy_with_integer_labels(remix_logits, y[i])
        m = {
            "loss_clf_int": cross_entropy(net.classifier_label_1(z_l), y),
            "loss_clf_fin": cross_entropy(net.classifier_label_2(z), y),
            "loss_dmn": cross_entropy(net.classifier_domain(z_d), e),
            "loss_remixed": jnp.where(valid, remix_ce, 0.0).sum() / self.net.num_classes,
            "loss_cnt_int": supcon_lambda(z_l, y, e),
            "loss_cnt_final": supcon_lambda(z, y, e),
            "loss_disc": disc_loss,
        }
        total = (m["loss_clf_int"] + m["loss_clf_fin"] + hp["dclf_lambda"] * m["loss_dmn"]
                 + hp["rmxd_lambda"] * m["loss_remixed"] + hp["cnt_lambda"] * (m["loss_cnt_int"] + m["loss_cnt_final"])
                 - hp["disc_lambda"] * disc_loss)
        return total, {"loss_total": total, **m}

    def update(self, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        x, y, e = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1), jnp.repeat(jnp.arange(k), b)
        params, disc = state["params"], state["disc"]

        def disc_objective(dd):
            net = self.model.merge(params)
            z = net.featurizer_label(x) - net.featurizer_domain(x)
            return cross_entropy(self.disc_module.merge(dd)(z), e)

        d_loss, g_d = jax.value_and_grad(disc_objective)(disc)
        (_, metrics), g = jax.value_and_grad(self.losses, has_aux=True)(params, disc, hp, x, y, e, key)
        new_disc, new_disc_opt = apply_updates(self.tx(hp), g_d, state["disc_opt"], disc)
        new_params, new_opt = apply_updates(self.tx(hp), g, state["opt"], params)
        count = state["step"] + 1  # DomainBed increments update_count first
        d_steps = hp["d_steps_per_g_step"]
        is_d = jnp.mod(count, 1 + d_steps) < d_steps
        pick = lambda a, bb: jax.tree.map(lambda u, v: jnp.where(is_d, u, v), a, bb)  # noqa: E731
        new = {**state, "params": pick(params, new_params), "opt": pick(state["opt"], new_opt),
               "disc": pick(new_disc, disc), "disc_opt": pick(new_disc_opt, state["disc_opt"]), "step": count}
        return new, {**metrics, "loss": jnp.where(is_d, d_loss, metrics["loss_total"])}
