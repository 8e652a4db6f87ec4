"""Mixture-of-experts transformer (``model.kind=moe``): the transformer with routed FFNs.

Each MoE block is the transformer's pre-norm block (``mixjax.models.transformer``: the
same ``Attention`` and ``RMSNorm``) with the MLP replaced by ``E`` SwiGLU experts stored
as stacked weights ``w_gate, w_up`` [E, d, f] and ``w_down`` [E, f, d] (logical axes
``("experts", "embed", "mlp")``; ``experts`` maps to the ``expert`` mesh axis). With
``model.hparams.moe_every = n`` every n-th block is an MoE block, the others dense.

Routing (top-k token choice with capacity), per sequence b (a routing group of S tokens)::

    z[s]   = x[s] W_r                     router logits, f32[E] (router in fp32)
    p[s]   = softmax(z[s])
    e_1..e_k = the k largest p[s]          (ties: lowest index, lax.top_k)
    g[s,j] = p[s,e_j]                      k = 1 (Switch)
           = p[s,e_j] / sum_i p[s,e_i]     k > 1 (renormalised over the chosen, GShard top-2)
    C      = min(S, max(1, ceil(capacity_factor * S * k / E)))   slots per expert
    assignments (s, j) take expert slots in the order s = 0..S-1, j = 0..k-1; an
    assignment whose expert already holds C tokens is dropped (its gate contributes 0)
    y[s]   = sum_j kept[s,j] g[s,j] FFN_{e_j}(x[s])

The capacity per sequence and the (token, choice) priority follow MaxText's dense-matmul
path (``AI-Hypercomputer/maxtext``, ``src/MaxText/layers/moe.py``, ``RoutedMoE.generate_masks``:
``expert_capacity_per_batch`` and the cumsum over the fused ``seq * num_experts_per_tok``
axis); the gates of a dropped assignment are zeroed there too. Routing per sequence keeps
the layer independent of how the batch is sharded (1 device and 8 give the same result).
C is clamped to S because one token picks an expert at most once.

Auxiliary losses (per sequence, averaged over the batch like the token loss)::

    f[e]   = (1/S) sum_s sum_j [e_j(s) = e]           assignments per token (before dropping)
    P[e]   = (1/S) sum_s p[s,e]
    L_lb   = E * sum_e f[e] P[e]                      load balancing (Switch, arXiv 2101.03961
                                                      eq. 4; MaxText load_balance_loss: E^2
                                                      mean_e(density * density_prob))
    L_z    = (1/S) sum_s (logsumexp_e z[s,e])^2        router z-loss (ST-MoE,
                                                      arXiv 2202.08906 eq. 5)

Both are means over tokens of a per-token term (f is a count, it carries no gradient):
``aux[b,s] = aux_loss_coef E sum_e f_b[e] p[s,e] + z_loss_coef (lse z[s])^2``, summed over
the MoE blocks. ``mixjax.core.step.token_losses`` adds ``aux - stop_gradient(aux)`` to each
token's loss: the reported losses (and every statistic a mixer reads) stay the plain
cross-entropy, while the gradient is that of ``CE + aux`` under the step's token weights
(uniform weights: exactly ``mean CE + coef * L_lb + coef_z * L_z``).

Dispatch and combine are one-hot einsums (GShard, arXiv 2006.16668, sec. 2.2;
MaxText's ``BSM,BSEC -> EBCM``): ``x_e [E, B, C, d] = einsum(dispatch, x)``, the experts
run as batched matmuls, ``y = einsum(combine, out_e)``. ``x_e`` carries the logical
activation names ``(act_experts, act_batch, None, act_embed)``: with an ``expert`` mesh axis
the step's sharding constraints turn the dispatch into GSPMD's all-to-all.

Routing statistics: ``apply.routing(params, tokens)`` returns per MoE block and sequence the
tokens kept per expert and the assignments dropped (the ``expert_routing`` and
``expert_dropped`` statistics of ``mixjax.mixing.statistics``).

Export (``mixjax export RUN_DIR --format safetensors``, :func:`to_mixtral`): the
attention, norms, embeddings and dense blocks in the Llama naming of
``mixjax.models.hf_io``; a routed block ``i`` in Mixtral's naming (``transformers``'
``modeling_mixtral.py``: ``w1`` gate, ``w3`` up, ``w2`` down, torch ``[out, in]``)::

    moe.router     [d, E]     model.layers.{i}.block_sparse_moe.gate.weight          [E, d]
    moe.w_gate[e]  [d, f]     model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight [f, d]
    moe.w_up[e]    [d, f]     model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight [f, d]
    moe.w_down[e]  [f, d]     model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight [d, f]

(the per-expert names are :mod:`mixjax.models.experts`', shared with DEMix);
:func:`from_mixtral` reads such a file back (``model.init_from``). The routing knobs
(top_k, capacity factor, which blocks are routed) travel in the file's metadata
(``mixjax_model``); Mixtral itself routes without a capacity limit and
renormalises top-k gates, so a transformers Mixtral loading these tensors matches this
model only while no token is dropped.
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
from mixjax.parallel.activations import constrain

ROUTING = ("token_choice",)
HPARAMS = ("num_experts", "top_k", "capacity_factor", "routing", "aux_loss_coef",
           "z_loss_coef", "moe_every", "expert_d_ff")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoEConfig(experts.ExpertLayersConfig):
    """The transformer's config plus the routing hyperparameters (``model.hparams.*``);
    ``num_experts``, ``moe_every``, ``expert_d_ff`` and their checks are
    :class:`mixjax.models.experts.ExpertLayersConfig`'s."""

    KIND: ClassVar[str] = "moe"

    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25
    routing: str = "token_choice"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001

    def __post_init__(self):
        h = "model.hparams."
        if self.routing not in ROUTING:
            raise ValueError(f"{h}routing: unknown routing mode {self.routing!r}; known: "
                             f"{', '.join(ROUTING)}")
        super().__post_init__()
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"{h}top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"{h}top_k={self.top_k} > {h}num_experts={self.num_experts}")
        real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        if not (real(self.capacity_factor) and self.capacity_factor > 0):
            raise ValueError(f"{h}capacity_factor must be a number > 0, "
                             f"got {self.capacity_factor!r}")
        for key in ("aux_loss_coef", "z_loss_coef"):
            if not (real(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"{h}{key} must be a number >= 0, got {getattr(self, key)!r}")

    def is_moe(self, layer: int) -> bool:
        return self.has_experts(layer)

    def capacity(self, seq_len: int) -> int:
        """Slots per expert for a sequence of ``seq_len`` tokens."""
        c = math.ceil(self.capacity_factor * seq_len * self.top_k / self.num_experts)
        return int(min(seq_len, max(1, c)))


# -- routing (pure) -------------------------------------------------------------------------
def route(logits, top_k: int, capacity: int):
    """Token-choice routing of router logits f32[B, S, E] (module docstring).

    Returns ``(combine f32[B,S,E,C], dispatch f32[B,S,E,C], probs f32[B,S,E],
    chosen i32[B,S,k], kept f32[B,S,k])``: ``dispatch`` is 1 where token s sits in slot c
    of expert e, ``combine`` is its gate there.
    """
    b, s, e = logits.shape
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, chosen = jax.lax.top_k(probs, top_k)                          # [B,S,k]
    gates = top_p if top_k == 1 else top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(chosen, e, dtype=jnp.int32)                  # [B,S,k,E]
    # position (1-based) of each assignment in its expert's queue, (s, j) in row-major order
    fused = onehot.reshape(b, s * top_k, e)
    pos = (jnp.cumsum(fused, axis=1) * fused).reshape(b, s, top_k, e).sum(-1)   # [B,S,k]
    ft = probs.dtype
    kept = (pos <= capacity).astype(ft)
    slot = jax.nn.one_hot(pos - 1, capacity, dtype=ft)                   # 0 when dropped
    onehot_f = onehot.astype(ft)
    dispatch = jnp.einsum("bsk,bske,bskc->bsec", kept, onehot_f, slot)
    combine = jnp.einsum("bsk,bske,bskc->bsec", kept * gates, onehot_f, slot)
    return combine, dispatch, probs, chosen, kept


def aux_terms(logits, probs, chosen, num_experts: int):
    """Per-token ``(load_balance f32[B,S], z f32[B,S])`` whose means over a sequence are
    L_lb and L_z (module docstring)."""
    counts = jax.nn.one_hot(chosen, num_experts, dtype=probs.dtype).sum(2)   # [B,S,E]
    f = jax.lax.stop_gradient(jnp.mean(counts, axis=1))                      # [B,E]
    lb = num_experts * jnp.einsum("be,bse->bs", f, probs)
    z = jnp.square(jax.nn.logsumexp(logits, axis=-1))
    return lb, z


# -- modules ----------------------------------------------------------------------------------
class MoEMLP(nnx.Module):
    """E routed SwiGLU experts with stacked weights and a router."""

    def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
        d, f, e = cfg.d_model, cfg.expert_ff, cfg.num_experts
        pd = T.DTYPES[cfg.param_dtype]
        std_out = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        self.router = T._param(rngs, (d, e), ("embed", "router"), cfg.init_std, pd)
        self.w_gate = T._param(rngs, (e, d, f), ("experts", "embed", "mlp"), cfg.init_std, pd)
        self.w_up = T._param(rngs, (e, d, f), ("experts", "embed", "mlp"), cfg.init_std, pd)
        self.w_down = T._param(rngs, (e, f, d), ("experts", "mlp", "embed"), std_out, pd)
        self.cfg = cfg

    def __call__(self, x):
        """``(y [B,S,d], aux f32[B,S], kept_per_expert f32[B,E], dropped f32[B])``."""
        weights = {k: getattr(self, k)[...] for k in ("router", "w_gate", "w_up", "w_down")}
        return moe_ffn(weights, x, self.cfg)


def moe_ffn(weights, x, cfg: MoEConfig):
    """The routed FFN of x [B,S,d] as a pure function of ``weights`` (``router`` [d,E],
    ``w_gate``/``w_up`` [E,d,f], ``w_down`` [E,f,d]); returns ``(y [B,S,d], aux f32[B,S],
    kept per expert f32[B,E], dropped assignments f32[B])``. The router runs in fp32 (or
    in the inputs' dtype when that is wider), the experts in x's dtype."""
    dt = x.dtype
    rt = jnp.promote_types(dt, jnp.float32)
    logits = jnp.einsum("bsd,de->bse", x.astype(rt), weights["router"].astype(rt))
    combine, dispatch, probs, chosen, kept = route(logits, cfg.top_k, cfg.capacity(x.shape[1]))
    xe = jnp.einsum("bsec,bsd->ebcd", dispatch.astype(dt), x)
    names = ("act_experts", "act_batch", None, "act_embed")
    xe = constrain(xe, names)
    gate = jnp.einsum("ebcd,edf->ebcf", xe, weights["w_gate"].astype(dt))
    up = jnp.einsum("ebcd,edf->ebcf", xe, weights["w_up"].astype(dt))
    hidden = constrain(jax.nn.silu(gate) * up, ("act_experts", "act_batch", None, "act_mlp"))
    out = constrain(jnp.einsum("ebcf,efd->ebcd", hidden, weights["w_down"].astype(dt)), names)
    y = jnp.einsum("ebcd,bsec->bsd", out, combine.astype(dt))
    lb, z = aux_terms(logits, probs, chosen, cfg.num_experts)
    aux = cfg.aux_loss_coef * lb + cfg.z_loss_coef * z
    load = jnp.sum(dispatch, axis=(1, 3))                                   # [B,E]
    dropped = cfg.top_k * x.shape[1] - jnp.sum(kept, axis=(1, 2))            # [B]
    return y, aux, load, dropped


class MoEBlock(nnx.Module):
    """The transformer block with the MLP replaced by :class:`MoEMLP`."""

    def __init__(self, cfg: MoEConfig, rngs: nnx.Rngs):
        pd = T.DTYPES[cfg.param_dtype]
        self.attn_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = T.Attention(cfg, rngs)
        self.mlp_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.moe = MoEMLP(cfg, rngs)

    def __call__(self, x, segment_ids=None):
        x = x + self.attn(self.attn_norm(x), segment_ids)
        y, aux, load, dropped = self.moe(self.mlp_norm(x))
        return T.constrain(x + y, T.RESIDUAL), (aux, load, dropped)


class MoETransformer(nnx.Module):
    """``hidden_aux(tokens) -> (h, w, aux f32[B,S], routing)``; logits = h w^T."""

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        pd = T.DTYPES[cfg.param_dtype]
        self.cfg = cfg
        self.embed = T._param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                              cfg.init_std, pd)
        self.blocks = nnx.List([MoEBlock(cfg, rngs) if cfg.is_moe(i) else T.Block(cfg, rngs)
                                for i in range(cfg.num_layers)])
        self.final_norm = T.RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        if not cfg.tie_embeddings:
            self.unembed = T._param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                    cfg.init_std, pd)

    def hidden_aux(self, tokens, segment_ids=None):
        dt = T.DTYPES[self.cfg.dtype]
        x = T.constrain(jnp.take(self.embed[...], tokens, axis=0).astype(dt), T.RESIDUAL)
        run = T._block_fn(self.cfg.remat)
        aux = jnp.zeros(tokens.shape, jnp.float32)
        loads, drops = [], []
        for block in self.blocks:
            out = run(block, x, segment_ids)
            if isinstance(block, MoEBlock):
                x, (a, load, dropped) = out
                aux = aux + a
                loads.append(load)
                drops.append(dropped)
            else:
                x = out
        x = self.final_norm(x)
        w = self.embed[...] if self.cfg.tie_embeddings else self.unembed[...].T
        routing = {"kept": jnp.stack(loads), "dropped": jnp.stack(drops)}   # [L,B,E], [L,B]
        return x, w.astype(dt), aux, routing


def _logits(h, w):
    logits = jnp.einsum("btd,vd->btv", h, w)
    return T.constrain(logits, ("act_batch", "act_length", "act_vocab")).astype(jnp.float32)


class MoEApply(T.ModelApply):
    """The pure MoE model: ``apply(params, tokens)`` -> logits, ``apply.hidden`` -> (h, w)
    (both without the auxiliary losses, e.g. for evaluation), ``apply.with_aux(params,
    tokens, hidden=False) -> (logits or (h, w), aux f32[B,S])`` (what
    ``mixjax.core.step.token_losses`` calls) and ``apply.routing(params, tokens) ->
    {"kept": f32[L,B,E], "dropped": f32[L,B]}`` per MoE block."""

    def _model(self, params):
        return nnx.merge(self._graphdef, params, self._rest)

    def __call__(self, params, tokens, segment_ids=None):
        h, w, _, _ = self._model(params).hidden_aux(tokens, segment_ids)
        return _logits(h, w)

    def hidden(self, params, tokens, segment_ids=None):
        h, w, _, _ = self._model(params).hidden_aux(tokens, segment_ids)
        return h, w

    def with_aux(self, params, tokens, hidden: bool = False, segment_ids=None):
        h, w, aux, _ = self._model(params).hidden_aux(tokens, segment_ids)
        return ((h, w) if hidden else _logits(h, w)), aux

    def routing(self, params, tokens, segment_ids=None):
        return self._model(params).hidden_aux(tokens, segment_ids)[3]


# -- the registered kind --------------------------------------------------------------------
def config_from(model_cfg: Any, vocab_size: int) -> MoEConfig:
    """The :class:`MoEConfig` of a ``model`` section (routing knobs in ``model.hparams``)."""
    hp = dict(getattr(model_cfg, "hparams", None) or {})
    unknown = sorted(set(hp) - set(HPARAMS))
    if unknown:
        raise ValueError(f"model.hparams.{unknown[0]}: not a moe hyperparameter; known: "
                         f"{', '.join(HPARAMS)}")
    arch = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(T.TransformerConfig)
            if f.name != "vocab_size" and hasattr(model_cfg, f.name)}
    return MoEConfig(vocab_size=vocab_size, **arch, **hp)


def init_params(cfg: MoEConfig, seed: int):
    return nnx.to_pure_dict(nnx.state(MoETransformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def abstract_init(cfg: MoEConfig):
    """``(apply, abstract params, logical axes)`` without allocating."""
    model = nnx.eval_shape(lambda: MoETransformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    return (MoEApply(graphdef, rest, cfg.loss_chunk), nnx.to_pure_dict(param_state),
            T.logical_axes(param_state))


def init(cfg: MoEConfig, seed: int):
    """``(apply, params, logical_axes)`` like ``transformer.init``."""
    model = MoETransformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    return (MoEApply(graphdef, rest, cfg.loss_chunk), nnx.to_pure_dict(param_state),
            T.logical_axes(param_state))


def to_mixtral(params, cfg: MoEConfig) -> dict:
    """``{name: array}`` of a MoE model's params (module docstring)."""
    import numpy as np
    from mixjax.models import hf_io
    out = hf_io.to_llama(params, cfg)
    for i in range(cfg.num_layers):
        b = params["blocks"][i]
        if "moe" not in b:
            continue
        p = f"model.layers.{i}.block_sparse_moe."
        out[p + "gate.weight"] = np.ascontiguousarray(np.asarray(b["moe"]["router"]).T)
        out.update(experts.expert_tensors(b["moe"], p, cfg.num_experts))
    return out


def from_mixtral(tensors: dict, cfg: MoEConfig, where: str = "") -> dict:
    """Inverse of :func:`to_mixtral` (``model.init_from`` of a file ``mixjax export``
    wrote): every tensor present with its shape, none left over, the expert count equal to
    ``model.hparams.num_experts``, else one error naming the tensor."""
    from mixjax.models import hf_io

    def routed(i, get):
        if not cfg.is_moe(i):
            return None
        p = f"model.layers.{i}.block_sparse_moe."
        stack = experts.read_experts(tensors, get, p, cfg, where)
        stack["router"] = get(p + "gate.weight", (cfg.num_experts, cfg.d_model)).T
        return "moe", stack

    return hf_io.from_llama(tensors, cfg, where, experts=routed)
