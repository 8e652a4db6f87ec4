"""TTSS, test-time style shifting with style balancing (Park, Han, Kim & Moon, "Test-Time Style
Shifting: Handling Arbitrary Styles in Domain Generalization", ICML 2023, PMLR 202:27114-27131,
arXiv 2306.04911; earlier form: "Style Balancing and Test-Time Style Shifting for Domain
Generalization", openreview 7_3oRsaogr). No public code was found (searched the code and
issue corpora, repositories named *style-shift* / *TTSS*, the paper's literature lists give
no code link), so this is the paper's description with the choices below stated.

Style of an early feature map h f32[H, W, C] of one example (the paper's channel statistics):

    mu = mean_{HW} h,   sigma = sqrt(var_{HW} h + 1e-6)   (biased variance; f32[C] each)
    dist((mu, sigma), (m, s)) = ||mu - m||_2 + ||sigma - s||_2
    AdaIN(h; m, s) = s * (h - mu) / sigma + m

The early map ("the style layer") is the output of the network's first block, the map the
second block reads: MNIST CNN - GroupNorm(ReLU(conv1(x))); mixjax's small ResNet - the first
residual block; torchvision ResNet-18/50 - layer1 (MixStyle's place). Not before the CNN's
first GroupNorm: that norm would undo most of a shift made there. With one channel per
GroupNorm group (``cnn_widths[0] == 8``) every channel's statistics at this map are the
norm's affine parameters, the same for every example, so neither balancing nor shifting
changes anything (TTSS is ERM) - use >= 2 channels per group (DomainBed's 64 give 8). An MLP
featuriser has no feature map; the sweep refuses it (``needs_feature_map``,
``mixjax.dg.test_time.check_requirements``).

Training (one step on the K env batches of b examples, n = K b):

1. Style statistics per source domain e (running averages, stored in the state, no gradient):
   the batch's domain style (mean over its b examples of mu_i, of sigma_i) and its spread
   (mean over its examples of dist(style_i, batch domain style)); EMA with momentum 0.9
   (BatchNorm's), the first step copies the batch values.
2. Style balancing (our choice of the paper's rebalancing of style-class combinations): every
   example gets a target domain t_i such that, within each class of the batch, the examples
   are spread evenly over the K domain styles (counts differ by at most one): a random order
   u within the class gives the rank r_i, and t_i = (r_i + o_{y_i}) mod K with a random
   offset o_c per class. An example whose t_i is another domain takes the style of a random
   example j_i of domain t_i in the batch: h_i <- AdaIN(h_i; sg mu_j, sg sigma_j) (the donor's
   statistics without gradient, as MixStyle); t_i = own domain keeps h_i. So every class is
   seen in every source style equally often, whatever the domains' class imbalance.
3. L = CE(classifier(rest(h')), y), Adam as ERM.

Test time (``predict_with_state``, every evaluation environment, per example, no update and no
randomness): the nearest source style e* = argmin_e dist(style(x), (m_e, s_e)); if
dist > ``ttss_threshold`` * spread_{e*} the map is shifted, h <- AdaIN(h; m_{e*}, s_{e*}),
before the rest of the network (the paper's threshold; relative to the domain's own spread
here, so that one value works whatever the feature scale - our choice). ``predict`` (the
"before" accuracies) is the plain network. The reported cost (``env{e}_tt_cost``) is the number
of shifted examples of the environment; the compute is one forward per example as plain
prediction, plus the K distances and the AdaIN. Hyperparameters: ttss_threshold 2.0 (U(1, 3)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, cross_entropy
from mixjax.dg.networks import DomainBedResNet, feature_dropout
from mixjax.models.cnn import MNISTCNN
from mixjax.models.resnet import ResNet

EPS = 1e-6
MOMENTUM = 0.9


def style_stats(h):
    """(mu, sigma) f32[N, C] of channels-last maps h f32[N, H, W, C]."""
    mu = h.mean(axis=(1, 2))
    return mu, jnp.sqrt(h.var(axis=(1, 2)) + EPS)


def style_distance(mu, sig, m, s):
    """f32[N, K]: ||mu_n - m_k|| + ||sig_n - s_k|| for mu, sig f32[N, C] and m, s f32[K, C]."""
    return (jnp.linalg.norm(mu[:, None] - m[None], axis=-1)
            + jnp.linalg.norm(sig[:, None] - s[None], axis=-1))


def adain(h, mu, sig, m, s):
    """s * (h - mu) / sig + m per example; h f32[N, H, W, C], the others f32[N, C]."""
    return (h - mu[:, None, None]) / sig[:, None, None] * s[:, None, None] + m[:, None, None]


def early_map(featurizer, x):
    """The style layer's output (see the module docstring)."""
    if isinstance(featurizer, MNISTCNN):
        return featurizer.norms[0](jax.nn.relu(featurizer.convs[0](x)))
    if isinstance(featurizer, ResNet):
        return featurizer.blocks[0](jax.nn.relu(featurizer.stem_norm(featurizer.stem(x))))
    if isinstance(featurizer, DomainBedResNet):
        net = featurizer.network
        x = jax.nn.relu(net.bn1(net.conv1(x)))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                  ((0, 0), (1, 1), (1, 1), (0, 0)))
        for block in net.layer1:
            x = block(x)
        return x
    raise ValueError(f"ttss needs a convolutional feature map (featurizer cnn, resnet, resnet18 "
                     f"or resnet50); {type(featurizer).__name__} has none")


def rest_features(featurizer, h):
    """The featuriser after the style layer: ``rest_features(f, early_map(f, x)) == f(x)``."""
    if isinstance(featurizer, MNISTCNN):
        for conv, norm in list(zip(featurizer.convs, featurizer.norms))[1:]:
            h = norm(jax.nn.relu(conv(h)))
        return jnp.mean(h, axis=(1, 2))
    if isinstance(featurizer, ResNet):
        for block in list(featurizer.blocks)[1:]:
            h = block(h)
        return jnp.mean(h, axis=(1, 2))
    net = featurizer.network
    for layer in (net.layer2, net.layer3, net.layer4):
        for block in layer:
            h = block(h)
    return feature_dropout(jnp.mean(h, axis=(1, 2)))


def balance_targets(key, y, k: int, b: int):
    """(target domain t i32[n], style donor j i32[n]) of style balancing for y i32[n] (n = k b,
    env-major): within each class, t is spread evenly over the k domains; j is a random example
    of domain t."""
    ku, ko, kj = jax.random.split(key, 3)
    n = y.shape[0]
    u = jax.random.uniform(ku, (n,))
    same = y[:, None] == y[None, :]
    rank = jnp.sum(same & (u[None, :] < u[:, None]), axis=1)
    offset = jax.random.randint(ko, (n,), 0, k)[y]           # one offset per class
    t = (rank + offset) % k
    return t, t * b + jax.random.randint(kj, (n,), 0, b)


def ema(old, new, first):
    return jnp.where(first, new, MOMENTUM * old + (1 - MOMENTUM) * new)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class TTSS(Algorithm):
    name = "ttss"
    needs_feature_map = True
    carry = ("style_mu", "style_sig", "style_spread")

    def __post_init__(self):
        if self.net.kind == "mlp":
            raise ValueError("ttss shifts the style statistics of a convolutional feature map; "
                             "the mlp featuriser has none (use cnn, resnet, resnet18 or resnet50)")

    @classmethod
    def own_hparams(cls, small):
        return {"ttss_threshold": H.HParam(2.0, lambda r: r.uniform(1.0, 3.0))}

    def init(self, key, hp):
        state = super().init(key, hp)
        f = self.model.merge(state["params"]).featurizer
        c = jax.eval_shape(lambda x: early_map(f, x), jnp.zeros((1, *self.net.input_shape))).shape[-1]
        k = self.num_envs
        return {**state, "style_mu": jnp.zeros((k, c)), "style_sig": jnp.ones((k, c)),
                "style_spread": jnp.zeros((k,)),
                # the test-time threshold travels in the state: the hook sees no hparams
                "threshold": jnp.asarray(hp["ttss_threshold"], jnp.float32)}

    def split(self, params):
        net = self.model.merge(params)
        return net, (lambda x: early_map(net.featurizer, x)), (lambda h: rest_features(net.featurizer, h))

    def loss(self, params, hp, state, xs, ys, key):
        k, b = xs.shape[:2]
        net, early, rest = self.split(params)
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        h = early(x)
        mu, sig = style_stats(h)
        # 1. running per-domain styles (of the maps before balancing)
        smu, ssig = jax.lax.stop_gradient((mu, sig))
        dm, ds = smu.reshape(k, b, -1).mean(1), ssig.reshape(k, b, -1).mean(1)
        spread = jax.vmap(lambda a, s, m, t: style_distance(a, s, m[None], t[None])[:, 0].mean())(
            smu.reshape(k, b, -1), ssig.reshape(k, b, -1), dm, ds)
        first = state["step"] == 0
        new = {"style_mu": ema(state["style_mu"], dm, first), "style_sig": ema(state["style_sig"], ds, first),
               "style_spread": ema(state["style_spread"], spread, first)}
        # 2. style balancing
        t, j = balance_targets(key, y, k, b)
        shift = t != jnp.repeat(jnp.arange(k), b)
        h = jnp.where(shift[:, None, None, None], adain(h, mu, sig, smu[j], ssig[j]), h)
        loss = cross_entropy(net.classifier(rest(h)), y)
        return loss, {"loss": loss, "balanced_frac": shift.mean(), **new}

    # ---- test time
    def test_time_init(self, state, meta):
        return {"cost": jnp.zeros((), jnp.float32)}

    def shifted_logits(self, state, x):
        """(logits after test-time style shifting, shifted bool[n])."""
        net, early, rest = self.split(state["params"])
        h = early(x)
        mu, sig = style_stats(h)
        d = style_distance(mu, sig, state["style_mu"], state["style_sig"])
        e = jnp.argmin(d, axis=1)
        far = jnp.min(d, axis=1) > state["threshold"] * state["style_spread"][e]
        h = jnp.where(far[:, None, None, None], adain(h, mu, sig, state["style_mu"][e], state["style_sig"][e]), h)
        return net.classifier(rest(h)), far

    def predict_with_state(self, state, tt, x, valid):
        logits, far = self.shifted_logits(state, x)
        return logits, {**tt, "cost": tt["cost"] + jnp.sum(far & valid).astype(jnp.float32)}
