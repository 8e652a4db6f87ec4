"""DEMix: domain-expert feed-forward layers (``model.kind=demix``).

Gururangan, Lewis, Holtzman, Smith, Zettlemoyer. "DEMix Layers: Disentangling Domains for
Modular Language Modeling" (NAACL 2022, arXiv 2108.05036). The transformer of
``mixjax.models.transformer`` (its ``Attention``, ``RMSNorm``, ``Block``) with the MLP of
every ``moe_every``-th block replaced by one SwiGLU expert per training domain, stored as
stacked weights ``[E, d, f]`` (logical axis ``experts``, like ``mixjax.models.moe``)::

    training   (sec. 3):   FFN(x[b,t]) = FFN_{domain_id[b]}(x[b,t])   (hard routing by the
                           batch row's domain; every other parameter is shared)
    inference  (sec. 4.2): FFN(x[b,t]) = sum_j P(D_t = j | x_{<=t}) FFN_j(x[b,t])
                           P(D_t = j | x_{<=t}) ∝ P(x_{<=t} | D = j) P(D = j)

The likelihood of the prefix under expert j is that of the model with expert j in every
DEMix layer: ``log P(x_{<=t} | D=j) = sum_{s<t} log p_j(x_{s+1} | x_{<=s})``
(:func:`expert_token_logprobs`, one forward per expert); the posterior at position t uses
the tokens seen up to t only, so the ensemble is still a causal LM. Priors (sec. 4.2):
``uniform``; or ``cached``: estimated once on held-out sequences of the target data and
kept fixed (:func:`cached_prior`: the sequence posteriors accumulated with an exponential
decay of 0.3 over 100 sequences, as in the reference code: ``kernelmachine/demix``'s
successor ``btm`` evaluation, ``precompute_domain_prior``, max_sequences=100, decay=0.3).
The ensemble mixes expert *outputs* inside each DEMix layer, as the paper's equation does
(the BTM code mixes the experts' output probabilities instead).

``apply(params, tokens)`` (no domain: what evaluation and ``mixjax eval`` call) is the
ensemble with the uniform prior; ``apply(params, tokens, domain_id=d)`` routes every row of
domain d to expert d (what the train step calls: ``mixjax.core.step.token_losses`` passes the
batch's ``domain_id`` to a model with ``takes_domain``). ``model.hparams.num_experts``
must equal the number of training domains (checked when the data is known).

Expert surgery (sec. 6, adaptation): :func:`add_expert` appends a copy of expert j (the
paper initialises a new domain's expert from the expert with the highest posterior on the
new domain's data: :func:`closest_expert`); :func:`remove_expert` drops one; both are
:func:`select_experts` (new expert j = old expert ``index[j]``), the map
``mixjax.train.demix_state`` also applies to the optimiser and mixer state.

Files (``mixjax export``, ``model.init_from``): :func:`to_hf` / :func:`from_hf`, the Llama
naming plus ``model.layers.{i}.demix.experts.{e}.{w1,w3,w2}.weight``
(:mod:`mixjax.models.experts`); the expert order is the file's ``mixjax_domains``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax.models import experts
from mixjax.models import transformer as T

HPARAMS = ("num_experts", "moe_every", "expert_d_ff")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEMixConfig(experts.ExpertLayersConfig):
    """``num_experts`` (one per training domain), ``moe_every``, ``expert_d_ff`` and their
    checks: :class:`mixjax.models.experts.ExpertLayersConfig`."""

    KIND: ClassVar[str] = "demix"
    NUM_EXPERTS_NOTE: ClassVar[str] = " (one expert per domain)"

    num_experts: int = 2

    def is_demix(self, layer: int) -> bool:
        return self.has_experts(layer)


def demix_ffn(weights, x, *, domain_id=None, mix=None):
    """The DEMix layer of x [B,S,d]: each row's own expert (``domain_id`` i32[B], a gather
    of that expert's weights: one expert's FLOPs) or the mixture ``sum_j mix[b,t,j] FFN_j``
    (``mix`` f32[B,S,E]: every expert runs)."""
    dt = x.dtype
    wg, wu, wd = (jnp.asarray(weights[k]).astype(dt) for k in ("w_gate", "w_up", "w_down"))
    if domain_id is not None:
        h = jax.nn.silu(jnp.einsum("bsd,bdf->bsf", x, wg[domain_id])) * \
            jnp.einsum("bsd,bdf->bsf", x, wu[domain_id])
        return jnp.einsum("bsf,bfd->bsd", h, wd[domain_id])
    h = jax.nn.silu(jnp.einsum("bsd,edf->bsef", x, wg)) * jnp.einsum("bsd,edf->bsef", x, wu)
    return jnp.einsum("bsef,efd,bse->bsd", h, wd, mix.astype(dt))


class DEMixFFN(nnx.Module):
    def __init__(self, cfg: DEMixConfig, rngs: nnx.Rngs):
        d, f, e = cfg.d_model, cfg.expert_ff, cfg.num_experts
        pd = T.DTYPES[cfg.param_dtype]
        std_out = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        self.w_gate = T._param(rngs, (e, d, f), ("experts", "embed", "mlp"), cfg.init_std, pd)
        self.w_up = T._param(rngs, (e, d, f), ("experts", "embed", "mlp"), cfg.init_std, pd)
        self.w_down = T._param(rngs, (e, f, d), ("experts", "mlp", "embed"), std_out, pd)

    def __call__(self, x, route):
        w = {k: getattr(self, k)[...] for k in ("w_gate", "w_up", "w_down")}
        return demix_ffn(w, x, **route)


class DEMixBlock(nnx.Module):
    def __init__(self, cfg: DEMixConfig, rngs: nnx.Rngs):
        pd = T.DTYPES[cfg.param_dtype]
        self.attn_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = T.Attention(cfg, rngs)
        self.mlp_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.demix = DEMixFFN(cfg, rngs)

    def __call__(self, x, route):
        x = x + self.attn(self.attn_norm(x))
        return T.constrain(x + self.demix(self.mlp_norm(x), route), T.RESIDUAL)


class DEMixTransformer(nnx.Module):
    def __init__(self, cfg: DEMixConfig, *, rngs: nnx.Rngs):
        pd = T.DTYPES[cfg.param_dtype]
        self.cfg = cfg
        self.embed = T._param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                              cfg.init_std, pd)
        self.blocks = nnx.List([DEMixBlock(cfg, rngs) if cfg.is_demix(i) else T.Block(cfg, rngs)
                                for i in range(cfg.num_layers)])
        self.final_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        if not cfg.tie_embeddings:
            self.unembed = T._param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                    cfg.init_std, pd)

    def hidden(self, tokens, route):
        dt = T.DTYPES[self.cfg.dtype]
        x = T.constrain(jnp.take(self.embed[...], tokens, axis=0).astype(dt), T.RESIDUAL)
        for block in self.blocks:
            x = block(x, route) if isinstance(block, DEMixBlock) else block(x)
        w = self.embed[...] if self.cfg.tie_embeddings else self.unembed[...].T
        return self.final_norm(x), w.astype(dt)


def _logits(h, w):
    return jnp.einsum("btd,vd->btv", h, w).astype(jnp.float32)


class DEMixApply(T.ModelApply):
    """``apply(params, tokens, domain_id=None)``: with ``domain_id`` i32[B] each row's expert
    (training), without it the ensemble under the uniform prior (evaluation);
    ``apply.hidden`` likewise; ``apply.ensemble(params, tokens, log_prior)`` any prior."""

    takes_domain = True

    def __init__(self, graphdef, rest, cfg: DEMixConfig):
        super().__init__(graphdef, rest, cfg.loss_chunk)
        self.cfg = cfg

    def _hidden(self, params, tokens, route):
        return nnx.merge(self._graphdef, params, self._rest).hidden(tokens, route)

    def hidden(self, params, tokens, segment_ids=None, domain_id=None):
        if segment_ids is not None:
            raise ValueError("model.kind='demix' does not take packed segment ids")
        if domain_id is None:
            return self._hidden(params, tokens, {"mix": self.posterior(
                params, tokens, jnp.full((self.cfg.num_experts,), -math.log(
                    self.cfg.num_experts)))})
        return self._hidden(params, tokens, {"domain_id": domain_id})

    def __call__(self, params, tokens, segment_ids=None, domain_id=None):
        return _logits(*self.hidden(params, tokens, segment_ids, domain_id))

    def expert_logits(self, params, tokens, expert):
        ids = jnp.full((tokens.shape[0],), expert, jnp.int32)
        return _logits(*self._hidden(params, tokens, {"domain_id": ids}))

    def posterior(self, params, tokens, log_prior):
        """P(D_t = j | x_{<=t}) f32[B,S,E] (module docstring), gradient-free."""
        lp = expert_token_logprobs(self, params, tokens)              # [E,B,S-1]
        return prefix_posterior(jax.lax.stop_gradient(lp), log_prior)

    def ensemble(self, params, tokens, log_prior):
        """Logits of the DEMix ensemble under ``log_prior`` f32[E]."""
        mix = self.posterior(params, tokens, log_prior)
        return _logits(*self._hidden(params, tokens, {"mix": mix}))


def expert_token_logprobs(apply: DEMixApply, params, tokens):
    """``lp[j,b,s] = log p_j(tokens[b,s+1] | tokens[b,:s+1])`` f32[E,B,S-1]: expert j alone."""
    def one(j):
        logits = apply.expert_logits(params, tokens, j)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jax.vmap(one)(jnp.arange(apply.cfg.num_experts))


def prefix_posterior(lp, log_prior):
    """``P(D_t=j | x_{<=t})`` f32[B,S,E] from ``lp`` f32[E,B,S-1] and ``log_prior`` f32[E]:
    at position t the prefix likelihood is ``sum_{s<t} lp[j,b,s]`` (position 0: the prior)."""
    e, b, _ = lp.shape
    cum = jnp.concatenate([jnp.zeros((e, b, 1), lp.dtype), jnp.cumsum(lp, axis=2)], axis=2)
    return jax.nn.softmax(cum + log_prior[:, None, None], axis=0).transpose(1, 2, 0)


def cached_prior(lp, *, decay: float = 0.3, max_sequences: int = 100):
    """The cached prior f32[E] from held-out sequences' ``lp`` f32[E,N,S-1]: for each
    sequence n in order, ``post_n = softmax(log prior + sum_s lp[:,n,s])`` and
    ``prior <- decay^(n+1) prior + post_n`` (unnormalised, in log space), starting from
    ``log prior = 0``; the result is normalised (reference: ``precompute_domain_prior``)."""
    log_prior = jnp.zeros(lp.shape[0], jnp.float32)
    seq_ll = jnp.sum(lp, axis=2)                                        # [E,N]
    for n in range(min(max_sequences, lp.shape[1])):
        log_post = jax.nn.log_softmax(seq_ll[:, n] + log_prior)
        log_prior = jnp.logaddexp(math.log(decay ** (n + 1)) + log_prior, log_post)
    return jax.nn.softmax(log_prior)


def closest_expert(apply: DEMixApply, params, tokens, pad_id: int | None = None) -> int:
    """The expert with the highest mean sequence posterior (uniform prior) on ``tokens``
    (positions predicting ``pad_id`` left out): the one a new domain's expert is
    initialised from (sec. 6)."""
    lp = expert_token_logprobs(apply, params, tokens)
    if pad_id is not None:
        lp = jnp.where(tokens[None, :, 1:] != pad_id, lp, 0.0)
    post = jax.nn.softmax(jnp.sum(lp, axis=2), axis=0)                  # [E,N]
    return int(jnp.argmax(jnp.mean(post, axis=1)))


def _expert_leaves(params, fn):
    """``params`` with ``fn`` applied to every DEMix expert weight (leading axis E)."""
    def visit(tree):
        if isinstance(tree, dict):
            return {k: ({n: fn(v) for n, v in sub.items()} if k == "demix" else visit(sub))
                    for k, sub in tree.items()}
        return tree
    return visit(params)


def select_experts(params, index):
    """``params`` whose expert ``j`` is the old expert ``index[j]`` in every DEMix layer (a
    gather on the experts axis: :func:`add_expert` and :func:`remove_expert` are two cases;
    ``mixjax.train.demix_state`` applies the same map to the Adam moments)."""
    idx = jnp.asarray(index, jnp.int32)
    return _expert_leaves(params, lambda w: jnp.take(w, idx, axis=0))


def add_expert(params, source: int):
    """``params`` with a new last expert in every DEMix layer, a copy of expert ``source``."""
    return _expert_leaves(params, lambda w: jnp.concatenate([w, w[source:source + 1]], 0))


def remove_expert(params, index: int):
    """``params`` without expert ``index`` in every DEMix layer."""
    return _expert_leaves(params, lambda w: jnp.delete(w, index, axis=0))


# -- safetensors naming (mixjax export, model.init_from) ------------------------------------
def to_hf(params, cfg: DEMixConfig) -> dict:
    """``{name: array}``: the Llama naming of ``mixjax.models.hf_io`` for everything but the
    DEMix layers, whose experts are ``model.layers.{i}.demix.experts.{e}.{w1,w3,w2}.weight``
    (``mixjax.models.experts``); expert ``e`` is the ``e``-th domain of the file's
    ``mixjax_domains`` metadata."""
    from mixjax.models import hf_io
    out = hf_io.to_llama(params, cfg)
    for i in range(cfg.num_layers):
        if "demix" in params["blocks"][i]:
            out.update(experts.expert_tensors(params["blocks"][i]["demix"],
                                              f"model.layers.{i}.demix.", cfg.num_experts))
    return out


def from_hf(tensors: dict, cfg: DEMixConfig, where: str = "") -> dict:
    """Inverse of :func:`to_hf`; a tensor missing, misshapen or left over, or another
    number of experts than ``model.hparams.num_experts``: one error naming it."""
    from mixjax.models import hf_io

    def layer(i, get):
        if not cfg.is_demix(i):
            return None
        return "demix", experts.read_experts(tensors, get, f"model.layers.{i}.demix.", cfg,
                                             where)

    return hf_io.from_llama(tensors, cfg, where, experts=layer)


# -- construction ---------------------------------------------------------------------------
def config_from(model_cfg: Any, vocab_size: int) -> DEMixConfig:
    hp = dict(getattr(model_cfg, "hparams", None) or {})
    unknown = sorted(set(hp) - set(HPARAMS))
    if unknown:
        raise ValueError(f"model.hparams.{unknown[0]}: not a demix hyperparameter; known: "
                         f"{', '.join(HPARAMS)}")
    arch = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(T.TransformerConfig)
            if f.name != "vocab_size" and hasattr(model_cfg, f.name)}
    return DEMixConfig(vocab_size=vocab_size, **arch, **hp)


def init_params(cfg: DEMixConfig, seed: int):
    return nnx.to_pure_dict(nnx.state(DEMixTransformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _split(model, cfg):
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    return (DEMixApply(graphdef, rest, cfg), nnx.to_pure_dict(param_state),
            T.logical_axes(param_state))


def abstract_init(cfg: DEMixConfig):
    return _split(nnx.eval_shape(lambda: DEMixTransformer(cfg, rngs=nnx.Rngs(0))), cfg)


def init(cfg: DEMixConfig, seed: int):
    return _split(DEMixTransformer(cfg, rngs=nnx.Rngs(seed)), cfg)
