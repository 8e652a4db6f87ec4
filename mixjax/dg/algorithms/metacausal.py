"""Meta-causal learning for single-source DG (Chen, Gao, Wu, Luo, "Meta-Causal Learning for
Single Domain Generalization", CVPR 2023, arXiv 2304.03709), from the authors' code
zhigao2017/Meta-causal (commit 761e015; the later commits only edit readme.md):
``code/main_my_joint_v13_auto.py`` training step (lines 215-270) and ``evaluate_causal``
(lines 374-405), ``code/network/adaptor_v2.py`` (``mapping`` lines 7-33, ``effect_to_weight``
lines 36-61), ``code/tools/causalaugment_v3.py`` (``causal_list`` lines 370-390,
``RandAugment_incausal`` lines 438-462, ``FactualAugment_incausal`` lines 511-530,
``MultiCounterfactualAugment_incausal`` lines 550-573), ``code/run_digits/run_my_joint_test.sh``
(lambda_causal 1, lambda_re 1, randm/randn True).

J transformation factors T_j(x, v) with a strength v in [0, 1] simulate domain shifts; one
adaptor (feature mapping) M_j per factor, an MLP d -> d/2 -> d (the code's digits mapping); an
effect-to-weight MLP E: C -> 10C -> 1. On a batch (x, y), f = featuriser, h = classifier:

* learning to simulate (``RandAugment_incausal``): x_RA = a random composition of n ~ U{1..J}
  factors drawn with replacement, at one strength m ~ U{0, 1/30, ..., 1} per example;
* factual (``FactualAugment_incausal``, m = 4/30): x_FA_j = T_j(x, 4/30); each adaptor learns to
  map its factor's shift back: f_adapt_j = M_j(f(x_FA_j));
* counterfactual inference (``MultiCounterfactualAugment_incausal``): do(T_j = v_l) on x_RA at
  L strengths v_l = l / (L - 1) (``metacausal_levels``; the code's range(0, 31, stride) / 30);
  the effect of factor j is e_j = mean_l [h(f(x_RA)) - h(f(T_j(x_RA, v_l)))] (logits, f32[C]);
  alpha = softmax_j E(e_j), and f_adapt_RA = sum_j alpha_j M_j(f(x_RA));
* L = CE(h f(x), y) + CE(h f_adapt_j, y) + lambda_re MSE(f_adapt_j, f(x))
      + lambda_causal (lambda_re MSE(f_adapt_RA, f(x)) + CE(h f_adapt_RA, y)),
  one Adam over the network, the adaptors and E (the code's single optimiser; its SGD/Adam
  choice per dataset is DomainBed's Adam here), nothing detached (as the code).

Test time (``evaluate_causal``; ``predict_with_state``, every evaluation environment, per
example, no update): e_j from do(T_j = v_l) on the test input itself, alpha = softmax E(e), and
the logits are h(sum_j alpha_j M_j(f(x))). ``predict`` is the plain network (the "before"
accuracies). The reported cost is the number of counterfactual forwards (J L per example).
The code's test-time ``MultiCounterfactualAugment`` (causalaugment_v3.py:582-603) transforms
``imgs[b_]``, a row of its zeroed output buffer, instead of the input ``img[b_]``, so its
counterfactuals are of black images; this module transforms the input, as the paper states.

Single source: the paper trains on one domain. In the DG sweep the K training environments are
pooled as that one source (their batches concatenated; environment labels are not read), and
model selection sees the test-time procedure's accuracies on the training environments' held-out
splits like any algorithm's.

Factors (our choice): the code's 16 PIL operations include geometric ones (shear, rotate) and
PIL-specific ones (equalize, autocontrast, sharpness, solarize-add) with no shape-free array
equivalent; we keep eight array operations on intensities in [0, 1] with the code's ranges where
one exists: brightness x (0.1 + 1.8 v); contrast and colour (saturation), the same factor about
the example's mean / channel mean; invert 1 - x (v unused, as the code); solarize (x >= v ->
1 - x); posterize to 2^max(1, floor(4 v)) levels; Gaussian noise sigma 0.1 v (no clipping: not
every dataset is an image in [0, 1]); horizontal flip (v unused). L = 3 levels by default (0,
1/2, 1; {3, 4, 6} in the search; the code: 7 on PACS, 11 on digits) to bound the CPU cost: a
step forwards and back-propagates 2 + J + J L = 34 views of each example (ERM: 1).
Search ranges for the lambdas are ours (the code fixes 1): 10^U(-1, 0.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.config import ConfigError
from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy
from mixjax.dg.networks import mlp

FACTUAL_STRENGTH = 4.0 / 30.0      # FactualAugment_incausal(m=4), randm=False
RA_LEVELS = 31                      # RandAugment_incausal: m = randint(0, 30), v = m / 30


def _brightness(x, v, eps):
    return x * (0.1 + 1.8 * v)


def _contrast(x, v, eps):
    mean = jnp.mean(x)
    return mean + (x - mean) * (0.1 + 1.8 * v)


def _colour(x, v, eps):
    grey = jnp.mean(x, axis=-1, keepdims=True)
    return grey + (x - grey) * (0.1 + 1.8 * v)


def _invert(x, v, eps):
    return 1.0 - x


def _solarize(x, v, eps):
    return jnp.where(x >= v, 1.0 - x, x)


def _posterize(x, v, eps):
    levels = 2.0 ** jnp.maximum(1.0, jnp.floor(4.0 * v))
    return jnp.floor(x * levels) / levels


def _noise(x, v, eps):
    return x + 0.1 * v * eps


def _flip(x, v, eps):
    return jnp.flip(x, axis=-2 if x.ndim >= 3 else -1)


FACTORS = (("brightness", _brightness), ("contrast", _contrast), ("colour", _colour), ("invert", _invert),
           ("solarize", _solarize), ("posterize", _posterize), ("noise", _noise), ("flip", _flip))
NUM_FACTORS = len(FACTORS)


def all_factors(x, v, eps):
    """f32[J, n, ...]: every factor on every example of x f32[n, ...] at strengths v f32[n]
    (``eps`` f32[n, ...]: the noise factor's standard normal draws)."""
    return jnp.stack([jax.vmap(fn)(x, v, eps) for _, fn in FACTORS])


def counterfactuals(x, eps):
    """f32[J, L, n, ...]: do(T_j = v_l) on every example, v_l = l / (L - 1), L = len(eps)."""
    levels, n = eps.shape[0], x.shape[0]
    out = jax.vmap(lambda v, e: all_factors(x, jnp.full((n,), v), e))(jnp.linspace(0.0, 1.0, levels), eps)
    return jnp.swapaxes(out, 0, 1)


def random_augment(x, u, eps):
    """RandAugment_incausal (randn, randm): per example n ~ U{1..J} factors drawn with replacement,
    applied in the drawn order at one strength m / 30, m ~ U{0..30}. ``u`` f32[n, J + 2] uniform
    draws (n, m, then the J slots' factors), ``eps`` f32[J, n, ...] the noise factor's draws."""
    count = 1 + jnp.floor(u[:, 0] * NUM_FACTORS)
    v = jnp.floor(u[:, 1] * RA_LEVELS) / (RA_LEVELS - 1)
    ops = jnp.floor(u[:, 2:] * NUM_FACTORS).astype(jnp.int32).T           # [J slots, n]
    rows = jnp.arange(x.shape[0])

    def body(s, xs):
        chosen = all_factors(xs, v, eps[s])[ops[s], rows]         # slot s's factor per example
        keep = (s < count).reshape(-1, *([1] * (x.ndim - 1)))
        return jnp.where(keep, chosen, xs)

    return jax.lax.fori_loop(0, NUM_FACTORS, body, x)


def draws(key, x, levels: int):
    """The step's random numbers from one uniform draw: (u f32[n, J + 2], eps f32[J + 1 + L, n, ...]),
    eps standard normal by the inverse CDF."""
    n, size = x.shape[0], x[0].size
    extra = NUM_FACTORS + 1 + levels
    flat = jax.random.uniform(key, (n * (NUM_FACTORS + 2) + extra * n * size,), minval=1e-6, maxval=1 - 1e-6)
    u = flat[: n * (NUM_FACTORS + 2)].reshape(n, NUM_FACTORS + 2)
    eps = jax.scipy.special.ndtri(flat[n * (NUM_FACTORS + 2):]).reshape(extra, *x.shape)
    return u, eps


@register
class MetaCausal(Algorithm):
    name = "metacausal"

    @classmethod
    def own_hparams(cls, small):
        lam = lambda r: 10 ** r.uniform(-1, 0.5)  # noqa: E731
        return {"metacausal_lambda_causal": H.HParam(1.0, lam),
                "metacausal_lambda_re": H.HParam(1.0, lam),
                "metacausal_levels": H.HParam(3, lambda r: int(r.choice([3, 4, 6])))}

    # ---- modules
    @property
    def dim(self) -> int:
        return self.model.abstract.featurizer.n_outputs

    @property
    def levels(self) -> int:
        return self.static_hp("metacausal_levels")

    @property
    def map_module(self):
        return mlp(self.dim, self.dim, max(self.dim // 2, 1), 2)

    @property
    def e2w_module(self):
        return mlp(self.net.num_classes, 1, 10 * self.net.num_classes, 2)

    def init(self, key, hp):
        if self.levels < 2:     # one line, exit 2 from the CLI, before compiling
            raise ConfigError("algorithm 'metacausal' needs metacausal_levels >= 2 (counterfactual strengths), "
                              f"got {self.levels}")
        kn, km, ke = jax.random.split(key, 3)
        params = self.model.init(kn)
        causal = {"maps": jax.vmap(self.map_module.init)(jax.random.split(km, NUM_FACTORS)),
                  "e2w": self.e2w_module.init(ke)}
        tx = self.tx(hp)
        return {"params": params, "causal": causal, "opt": tx.init(params), "causal_opt": tx.init(causal),
                "step": jnp.zeros((), jnp.int32)}

    def adapt_each(self, causal, z):
        """f32[J, n, d]: M_j(z_j) for z f32[J, n, d] (one adaptor per factor)."""
        return jax.vmap(lambda p, zj: self.map_module.merge(p)(zj))(causal["maps"], z)

    def effect_weights(self, causal, logits, cf_logits):
        """alpha f32[n, J] = softmax_j E(mean_l (logits - cf_logits[j, l]))."""
        effect = jnp.mean(logits[None, None] - cf_logits, axis=1)             # [J, n, C]
        j, n, c = effect.shape
        w = self.e2w_module.merge(causal["e2w"])(effect.reshape(j * n, c)).reshape(j, n)
        return jax.nn.softmax(w.T, axis=1)

    def combine(self, causal, z, alpha):
        """sum_j alpha_j M_j(z): z f32[n, d], alpha f32[n, J]."""
        mapped = self.adapt_each(causal, jnp.broadcast_to(z, (NUM_FACTORS, *z.shape)))
        return jnp.einsum("nj,jnd->nd", alpha, mapped)

    def views(self, x, key):
        """f32[2 + J + J L, n, ...]: x, x_RA, the J factual views x_FA_j and the J L
        counterfactuals do(T_j = v_l) of x_RA (one featuriser call takes them all)."""
        n, levels = x.shape[0], self.levels
        u, eps = draws(key, x, levels)
        x_ra = random_augment(x, u, eps[:NUM_FACTORS])
        x_fa = all_factors(x, jnp.full((n,), FACTUAL_STRENGTH), eps[NUM_FACTORS])
        cf = counterfactuals(x_ra, eps[NUM_FACTORS + 1:]).reshape(NUM_FACTORS * levels, *x.shape)
        return jnp.concatenate([x[None], x_ra[None], x_fa, cf])

    def causal_loss(self, params, causal, hp, xs, ys, key):
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        n, nf = k * b, NUM_FACTORS
        views = self.views(x, key)
        z = self.features(params, views.reshape(-1, *x.shape[1:])).reshape(views.shape[0], n, -1)
        f, f_ra, f_fa, f_cf = z[0], z[1], z[2:2 + nf], z[2 + nf:]
        # learning the adaptors: each maps its factor's shift back to the clean features
        f_adapt = self.adapt_each(causal, f_fa)
        cls_map = cross_entropy(self.classify(params, f_adapt), jnp.broadcast_to(y, (nf, n)))
        re_map = jnp.mean((f_adapt - f[None]) ** 2)
        # counterfactual inference of the causes of x_RA's shift, and the weighted adaptation
        cf_logits = self.classify(params, f_cf).reshape(nf, self.levels, n, -1)
        alpha = self.effect_weights(causal, self.classify(params, f_ra), cf_logits)
        f_adapt_ra = self.combine(causal, f_ra, alpha)
        cls_causal = cross_entropy(self.classify(params, f_adapt_ra), y)
        re_causal = jnp.mean((f_adapt_ra - f) ** 2)
        cls = cross_entropy(self.classify(params, f), y)
        lam_re, lam_c = hp["metacausal_lambda_re"], hp["metacausal_lambda_causal"]
        loss = cls + cls_map + lam_re * re_map + lam_c * (lam_re * re_causal + cls_causal)
        return loss, {"loss": loss, "cls_loss": cls, "cls_mapping": cls_map, "re_mapping": re_map,
                      "cls_causal": cls_causal, "re_causal": re_causal,
                      "alpha_max": jnp.mean(jnp.max(alpha, axis=1))}

    def loss(self, params, hp, state, xs, ys, key):
        return self.causal_loss(params, state["causal"], hp, xs, ys, key)

    def update(self, hp, state, xs, ys, key):
        (grads, cgrads), aux = jax.grad(
            lambda p, c: self.causal_loss(p, c, hp, xs, ys, key), argnums=(0, 1), has_aux=True
        )(state["params"], state["causal"])
        tx = self.tx(hp)
        params, opt = apply_updates(tx, grads, state["opt"], state["params"])
        causal, copt = apply_updates(tx, cgrads, state["causal_opt"], state["causal"])
        return {**state, "params": params, "opt": opt, "causal": causal, "causal_opt": copt,
                "step": state["step"] + 1}, aux

    # ---- test time (evaluate_causal)
    def causal_logits(self, state, x, key):
        """evaluate_causal: the effects of do(T_j = v_l) on x itself weight the adaptors."""
        params, causal = state["params"], state["causal"]
        n, nf = x.shape[0], NUM_FACTORS
        u = jax.random.uniform(key, (self.levels, *x.shape), minval=1e-6, maxval=1 - 1e-6)
        cf = counterfactuals(x, jax.scipy.special.ndtri(u))
        views = jnp.concatenate([x[None], cf.reshape(nf * self.levels, *x.shape)])
        z = self.features(params, views.reshape(-1, *x.shape[1:])).reshape(views.shape[0], n, -1)
        cf_logits = self.classify(params, z[1:]).reshape(nf, self.levels, n, -1)
        alpha = self.effect_weights(causal, self.classify(params, z[0]), cf_logits)
        return self.classify(params, self.combine(causal, z[0], alpha))

    def test_time_init(self, state, meta):
        return {"chunk": jnp.zeros((), jnp.int32), "cost": jnp.zeros((), jnp.float32)}

    def predict_with_state(self, state, tt, x, valid):
        key = jax.random.fold_in(jax.random.key(0), tt["chunk"])   # the noise factor's draws
        logits = self.causal_logits(state, x, key)
        cost = tt["cost"] + (NUM_FACTORS * self.levels) * jnp.sum(valid).astype(jnp.float32)
        return logits, {"chunk": tt["chunk"] + 1, "cost": cost}
