"""D3G: training-domain-specific heads reweighted by domain relations from metadata (Yao,
Yang, Pan, Liu, Koh, Finn, "Improving Domain Generalization with Domain Relations", ICLR 2024,
arXiv 2302.02609, section 3).

No public code was found (searched the code index for the paper's repository and for its
loss); this is the paper as written, with the choices below.

A shared featuriser phi and one linear head h_e per training environment (the paper's
multi-headed network). Relations between environments come from their metadata
``m_e`` (``EnvDataset.env_metadata``: the angle for RotatedMNIST, the colour-label agreement
P(colour = y) for ColoredMNIST; every field the dataset has, sorted by name):

    a(m, m') = exp(-|| (m - m') / s ||^2 / (2 tau^2)),   s = per-field range over the job's
                                                        training envs (1 where it is 0)

(the paper's fixed relation ``a^g`` is a similarity of the metadata; the kernel, the range
scaling and ``tau`` = ``d3g_tau`` are choices made here). With p_e = softmax(h_e(phi(x))):

    training, per training env e (the K env batches of a step):
        L_e = CE(h_e(phi(x_e)), y_e) + lambda * ( -log sum_{e' != e} w_ee' p_e'(y_e | x_e) )
        w_ee' = a(m_e, m_e') / sum_{e'' != e} a(m_e, m_e'')         (relations to the others)
        L = mean_e L_e                                            (lambda = ``d3g_lambda``)

    the consistency term: the relation-weighted combination of the *other* envs' heads must
    predict env e's labels, as the test stage will do for an unseen env (paper, Fig. 1c);

    test time (``predict_with_state``, per evaluation env t, mixjax.dg.test_time):
        p(y | x) = sum_e w_te p_e(y | x),  w_te = a(m_t, m_e) / sum_e' a(m_t, m_e')

    logits = log p. Plain ``predict`` (the "before test time" accuracies) is the uniform
    average of the heads, the "conventional averaging" the paper compares against, so each
    record reads off the effect of the relation weighting.

Heads are combined as probabilities (a mixture of the heads' predictive distributions; the
paper writes a weighted sum of the domain-specific functions, for regression outputs). The
paper's learned relations ``a^l`` (an encoder of the metadata, mixed in with weight
``1 - beta``) are not implemented: beta = 1, fixed relations only. With one training env
the consistency term is 0 (no other head). The network's own classifier is unused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates
from mixjax.dg.algorithms.dsrm import init_heads


def log_relations(m_a, m_b, scale, tau):
    """f32[A, B]: log a = -||(m_a_i - m_b_j) / scale||^2 / (2 tau^2); m_a f32[A, M], m_b f32[B, M].
    Normalised relations are a softmax of these (no underflow when every a is tiny)."""
    d = (m_a[:, None, :] - m_b[None, :, :]) / scale
    return -(d * d).sum(-1) / (2.0 * tau * tau)


def metadata_scale(train_meta):
    """f32[M]: each field's range over the training envs, 1 where the range is 0."""
    r = train_meta.max(0) - train_meta.min(0)
    return jnp.where(r > 0, r, 1.0)


def head_log_probs(z, heads):
    """f32[E, N, C] log-softmax of every head on features z f32[N, D]."""
    logits = jnp.einsum("nd,edc->enc", z, heads["kernel"]) + heads["bias"][:, None, :]
    return jax.nn.log_softmax(logits, -1)


def mixture_logits(logp, w):
    """log sum_e w_e p_e: logp f32[E, N, C], w f32[E] (sums to 1) -> f32[N, C]."""
    return jax.scipy.special.logsumexp(logp + jnp.log(w)[:, None, None], axis=0)


def d3g_loss(z, ys, heads, train_meta, tau, lam):
    """(loss, supervised CE, consistency) on features z f32[K, b, D], labels ys int32[K, b]."""
    k = z.shape[0]
    logp = jax.vmap(lambda zk: head_log_probs(zk, heads))(z)          # [K(data), K(head), b, C]
    own = jnp.stack([logp[e, e] for e in range(k)])                   # [K, b, C]
    sup = -jnp.take_along_axis(own, ys[..., None], -1).mean()
    if k == 1:
        return sup, sup, jnp.zeros(())
    log_a = log_relations(train_meta, train_meta, metadata_scale(train_meta), tau)
    w = jax.nn.softmax(jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, log_a), axis=1)   # [K, K], zero diagonal
    # log sum_{e'} w_ee' p_e'(y | x_e); log(0) on the diagonal is -inf, dropped by logsumexp
    mixed = jax.vmap(lambda lp, we: jax.scipy.special.logsumexp(
        lp + jnp.log(we)[:, None, None], axis=0))(logp, w)           # [K, b, C]
    cons = -jnp.take_along_axis(mixed, ys[..., None], -1).mean()
    return sup + lam * cons, sup, cons


@register
class D3G(Algorithm):
    name = "d3g"
    needs_train_env_metadata = True

    @classmethod
    def own_hparams(cls, small):
        return {"d3g_lambda": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
                "d3g_tau": H.HParam(0.3, lambda r: 10 ** r.uniform(-1, 0))}

    def init(self, key, hp):
        k_net, k_heads = jax.random.split(key)
        params = self.model.init(k_net)
        d = self.model.abstract.featurizer.n_outputs
        heads = init_heads(k_heads, self.num_envs, d, self.net.num_classes)
        return {"params": params, "heads": heads, "opt": self.tx(hp).init((params, heads)),
                "step": jnp.zeros((), jnp.int32), "tau": jnp.array(hp["d3g_tau"], jnp.float32)}

    def objective(self, trainable, hp, xs, ys):
        params, heads = trainable
        k, b = xs.shape[:2]
        z = self.features(params, xs.reshape(k * b, *xs.shape[2:])).reshape(k, b, -1)
        loss, sup, cons = d3g_loss(z, ys, heads, hp["train_env_meta"], hp["d3g_tau"], hp["d3g_lambda"])
        return loss, {"loss": loss, "sup_loss": sup, "consistency_loss": cons}

    def update(self, hp, state, xs, ys, key):
        trainable = (state["params"], state["heads"])
        grads, aux = jax.grad(self.objective, has_aux=True)(trainable, hp, xs, ys)
        (params, heads), opt = apply_updates(self.tx(hp), grads, state["opt"], trainable)
        return {**state, "params": params, "heads": heads, "opt": opt, "step": state["step"] + 1}, aux

    def predict(self, state, x):
        """Uniform average of the heads' probabilities (no metadata)."""
        logp = head_log_probs(self.features(state["params"], x), state["heads"])
        return mixture_logits(logp, jnp.full((logp.shape[0],), 1.0 / logp.shape[0]))

    # ---- test time: relation weights of the evaluation env to the training envs
    def test_time_init(self, state, meta):
        train = meta["train_env_meta"]
        log_a = log_relations(meta["env_meta"][None, :], train, metadata_scale(train), state["tau"])[0]
        return {"w": jax.nn.softmax(log_a)}

    def predict_with_state(self, state, tt_state, x, valid):
        del valid
        logp = head_log_probs(self.features(state["params"], x), state["heads"])
        return mixture_logits(logp, tt_state["w"]), tt_state
