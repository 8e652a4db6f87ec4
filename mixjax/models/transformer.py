"""Decoder-only transformer language model in Flax NNX.

Pre-norm blocks (Llama-style)::

    h   = x + Attn(RMSNorm(x))          causal multi-head attention with RoPE
    out = h + MLP(RMSNorm(h))           SwiGLU: W_down (silu(x W_gate) * (x W_up))
                                         or GELU: W_down gelu(x W_up)
    logits = RMSNorm(out) E^T            (tied) or RMSNorm(out) W_out (untied)

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g  (Zhang & Sennrich 2019, arXiv 1910.07467).
RoPE rotates each (even, odd) pair of query/key features by angle
p * base^(-2i/d_head) (Su et al. 2021, arXiv 2104.09864). SwiGLU: Shazeer 2020,
arXiv 2002.05202.

Parameters are created in ``param_dtype`` (fp32 by default) and cast to
``dtype`` (e.g. bf16) for the matmuls; logits are returned in fp32 so the loss
is computed in fp32 whatever the compute dtype.

Attention (``attention`` = ``auto`` | ``xla`` | ``cudnn`` | ``splash``, resolved by
:func:`resolve_attention` when the step is traced): ``xla`` is
``jax.nn.dot_product_attention(implementation="xla")``, which materialises the
[B, N, T, T] scores; ``cudnn`` is the cuDNN flash kernel (same call,
``implementation="cudnn"``: bf16/fp16 inputs only, so an fp32 model falls back to ``xla``);
``splash`` is the Pallas TPU splash kernel. ``auto`` = cudnn on an NVIDIA GPU, splash on
a TPU (one device only, see :func:`_splash_attention`), xla elsewhere.

Packed documents: ``segment_ids`` i32[B, T] (optional, on every entry point) restricts
attention to ``causal AND same segment``. Positions are not restarted per document:
RoPE scores depend on ``i - j`` only, so a document attends exactly as it would alone
(up to the rounding of the rotation angles; ``tests/test_model_attention.py``).

The loss does not need the logits: ``apply.hidden(params, tokens)`` returns the final
normalised hidden states and the unembedding ``(h [B,T,d], w [V,d])``, with
``logits = h w^T``; ``mixjax.core.step.token_losses`` uses it to compute the
cross-entropy over chunks of the sequence when ``loss_chunk > 0``.

Every parameter carries logical axis names (``nnx.with_partitioning``):
``vocab``, ``embed``, ``heads``, ``head_dim``, ``mlp``, ``norm``. A mesh only
needs rules mapping these names to mesh axes (see ``mixjax.parallel.sharding``).

Scale (``docs/scaling.md``): ``scan_layers=True`` stores the blocks as one module
whose parameters have a leading ``layers`` axis and runs them with ``nnx.scan``
(compile time independent of depth); ``remat`` = ``none`` | ``dots`` | ``full``
rematerialises each block in the backward pass (``nnx.remat``). Activations carry
logical names too (``act_batch``, ``act_length``, ``act_embed``, ``act_heads``,
``act_mlp``, ``act_vocab``; MaxText-style): ``mixjax.parallel.sharding.constrain`` turns
them into sharding constraints while a sharded step is traced and is a no-op
otherwise.

Pure-function API (what the train step uses)::

    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = split(model)      # params: nested dict of arrays
    apply = make_apply(graphdef, rest)
    logits = apply(params, tokens)             # f32[B, T, V]
    h, w = apply.hidden(params, tokens)        # dtype[B, T, d], dtype[V, d]

``params`` is a plain nested dict, so ``jax.grad``, ``jax.vmap``, ``jax.jvp``
and optax act on it directly.

This file is ~490 lines for one job, the model: its blocks, the scan/remat layout and
the attention kernels' choice share one parameter layout and one set of logical axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mixjax import forward_mode
from mixjax.parallel import activations
from mixjax.parallel.activations import constrain   # a no-op unless a sharded step is being traced

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Rematerialisation (jax.checkpoint) of each block: which intermediates the forward keeps for
# the backward pass. "dots" keeps the matmul outputs without batch dimensions (the weight
# projections; attention scores and elementwise ops are recomputed, MaxText's "minimal");
# "full" keeps only the block inputs and recomputes the whole block.
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


ATTENTION = ("auto", "xla", "cudnn", "splash")


def _splash_available() -> bool:
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: F401
            splash_attention_kernel, splash_attention_mask)
    except Exception:   # an ImportError, or a Pallas/Mosaic build without the TPU ops
        return False
    return True


def resolve_attention(choice: str, dtype, backend: str | None = None) -> str:
    """The implementation ``choice`` runs as on ``backend`` (default: jax's) for ``dtype``.

    ``auto``: ``cudnn`` on a CUDA GPU, ``splash`` on a TPU when the Pallas splash kernel
    imports and no multi-device activation sharding is active (the kernel is not
    auto-partitioned), else ``xla``. ``cudnn`` needs bf16/fp16 inputs: with an fp32 compute
    dtype it resolves to ``xla`` (explicit or auto), as does ``splash`` when unavailable.
    Both kernels are ``jax.custom_vjp`` functions without a forward-mode rule: while a
    model is traced for ``jax.jvp`` (inside ``mixjax.forward_mode.tracing``, as the
    gradient engine's ``jvp`` strategy does) every choice resolves to ``xla``.
    """
    if forward_mode.active():
        return "xla"
    backend = backend or jax.default_backend()
    if choice == "auto":
        if backend in ("gpu", "cuda"):
            choice = "cudnn"
        elif backend == "tpu":
            choice = "splash"
        else:
            choice = "xla"
    if choice == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return "xla"
    if choice == "splash" and (not _splash_available() or _sharded_trace()):
        return "xla"
    return choice


def _sharded_trace() -> bool:
    """Whether a step is being traced under a multi-device activation sharding."""
    ctx = getattr(activations._ACTIVE, "ctx", None)
    return ctx is not None and ctx[0].size > 1


def segment_mask(segment_ids):
    """bool[B, 1, T, T]: query i may see key j iff both are in the same segment (the
    causal part is the kernels' ``is_causal``)."""
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def attention(q, k, v, *, implementation: str, segment_ids=None):
    """Causal multi-head attention of q, k, v [B, T, N, H] (all one dtype) -> [B, T, N, H].

    ``implementation`` is a resolved one (``xla`` | ``cudnn`` | ``splash``). With
    ``segment_ids`` the mask is ``causal AND same segment``. cuDNN through
    ``jax.nn.dot_product_attention`` (jax 0.10/0.11) takes no segment ids; only a boolean
    ``mask``, which it turns into an additive [B, 1, T, T] bias: one T x T matrix per
    sequence (not per head), still without materialising the [B, N, T, T] scores.
    """
    if implementation == "splash":
        return _splash_attention(q, k, v, segment_ids)
    mask = None if segment_ids is None else segment_mask(segment_ids)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                        implementation=implementation)


def _splash_attention(q, k, v, segment_ids):
    """The Pallas TPU splash kernel (causal, optional segment ids), one sequence at a time
    under ``vmap``, as MaxText calls it (``MaxText/layers/attention_op.py``): [B, N, T, H] layout,
    the 1/sqrt(H) scale applied to q beforehand (the kernel does not scale). Not run in
    this repository's tests (no TPU); T must be a multiple of the kernel's block (128).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk, splash_attention_mask as sm)
    _, t, n, h = q.shape
    mask = sm.MultiHeadMask([sm.CausalMask(shape=(t, t)) for _ in range(n)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    qt = (q * jnp.asarray(h ** -0.5, q.dtype)).swapaxes(1, 2)
    kt, vt = k.swapaxes(1, 2), v.swapaxes(1, 2)
    if segment_ids is None:
        out = jax.vmap(kernel)(qt, kt, vt)
    else:
        seg = sk.SegmentIds(q=segment_ids, kv=segment_ids)
        out = jax.vmap(lambda a, b, c, s: kernel(a, b, c, segment_ids=s))(qt, kt, vt, seg)
    return out.swapaxes(1, 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Architecture hyperparameters (``d_ff`` defaults to 4 d_model, or 8/3 d_model for SwiGLU)."""

    vocab_size: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int | None = None
    mlp: str = "swiglu"          # "swiglu" | "gelu"
    tie_embeddings: bool = True
    dtype: str = "float32"       # compute dtype
    param_dtype: str = "float32"
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # Blocks as one module with a leading "layers" axis, run by nnx.scan (one compiled block
    # instead of num_layers). False keeps the per-block layout (params["blocks"][i]).
    scan_layers: bool = False
    remat: str = "none"          # "none" | "dots" | "full": what the backward pass recomputes
    attention: str = "auto"      # "auto" | "xla" | "cudnn" | "splash" (resolve_attention)
    # Sequence positions per cross-entropy chunk (mixjax.core.step.token_losses); 0 = the
    # full [B, T, V] logits at once. A model property so every caller of token_losses
    # (step, gradient engine, swarm, reference forward) computes the loss the same way.
    loss_chunk: int = 0

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by "
                             f"model.num_heads={self.num_heads}")
        if (self.d_model // self.num_heads) % 2:
            raise ValueError("model: head dimension d_model/num_heads must be even for RoPE")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"model.mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, "
                             f"got {self.remat!r}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"model.{key} must be one of {sorted(DTYPES)}, "
                                 f"got {getattr(self, key)!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"model.attention must be one of {ATTENTION}, "
                             f"got {self.attention!r}")
        if self.loss_chunk < 0:
            raise ValueError(f"model.loss_chunk must be >= 0, got {self.loss_chunk}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":  # keeps the parameter count of a 4x GELU MLP, rounded to 8
            return max(8, int(8 * self.d_model / 3 + 7) // 8 * 8)
        return 4 * self.d_model

    def num_params(self) -> int:
        """Exact parameter count (embeddings included)."""
        d, f, v = self.d_model, self.ff_dim, self.vocab_size
        mlp = (3 if self.mlp == "swiglu" else 2) * d * f
        block = 4 * d * d + mlp + 2 * d
        return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * block + d


def _normal(std: float):
    """``normal(0, std)`` whose values do not depend on being jitted: the barrier keeps XLA
    from folding ``std`` into the sampler's own constant, so the sharded jitted init
    (``mixjax.parallel.sharding.init_state_sharded``) equals the eager one bit for bit."""

    def init(key, shape, dtype=jnp.float32):
        unit = jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype))
        return unit * jnp.asarray(std, dtype)

    return init


def _param(rngs: nnx.Rngs, shape, names, std, dtype):
    init = nnx.with_partitioning(_normal(std), names, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, dtype))


def _ones(shape, names, dtype):
    init = nnx.with_partitioning(nnx.initializers.ones, names, eager_sharding=False)
    return nnx.Param(init(jax.random.key(0), shape, dtype))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = _ones((dim,), ("norm",), param_dtype)
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope(x, base: float):
    """Rotary position embedding of x: [B, T, N, H] (positions 0..T-1)."""
    t, h = x.shape[1], x.shape[-1]
    freq = base ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)          # [H/2]
    angle = jnp.arange(t, dtype=jnp.float32)[:, None] * freq[None, :]     # [T, H/2]
    sin, cos = jnp.sin(angle)[None, :, None, :], jnp.cos(angle)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        d, n, h = cfg.d_model, cfg.num_heads, cfg.head_dim
        pd = DTYPES[cfg.param_dtype]
        std_out = cfg.init_std / math.sqrt(2 * cfg.num_layers)  # GPT-2 residual scaling
        self.wq = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg.init_std, pd)
        self.wk = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg.init_std, pd)
        self.wv = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg.init_std, pd)
        self.wo = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), std_out, pd)
        self.cfg = cfg

    def __call__(self, x, segment_ids=None):
        dt = x.dtype
        heads = ("act_batch", "act_length", "act_heads", "act_head_dim")
        q = rope(jnp.einsum("btd,dnh->btnh", x, self.wq[...].astype(dt)), self.cfg.rope_base)
        k = rope(jnp.einsum("btd,dnh->btnh", x, self.wk[...].astype(dt)), self.cfg.rope_base)
        v = jnp.einsum("btd,dnh->btnh", x, self.wv[...].astype(dt))
        q, k, v = (constrain(a, heads) for a in (q, k, v))
        o = attention(q, k, v, implementation=resolve_attention(self.cfg.attention, dt),
                      segment_ids=segment_ids)
        return jnp.einsum("btnh,nhd->btd", constrain(o, heads), self.wo[...].astype(dt))


class MLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.ff_dim
        pd = DTYPES[cfg.param_dtype]
        std_out = cfg.init_std / math.sqrt(2 * cfg.num_layers)
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
        self.w_up = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
        self.w_down = _param(rngs, (f, d), ("mlp", "embed"), std_out, pd)

    def __call__(self, x):
        dt = x.dtype
        up = x @ self.w_up[...].astype(dt)
        if self.kind == "swiglu":
            hidden = jax.nn.silu(x @ self.w_gate[...].astype(dt)) * up
        else:
            hidden = jax.nn.gelu(up)
        hidden = constrain(hidden, ("act_batch", "act_length", "act_mlp"))
        return hidden @ self.w_down[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        pd = DTYPES[cfg.param_dtype]
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, segment_ids=None):
        x = x + self.attn(self.attn_norm(x), segment_ids)
        return constrain(x + self.mlp(self.mlp_norm(x)), RESIDUAL)


RESIDUAL = ("act_batch", "act_length", "act_embed")


def _run_block(block: Block, x, segment_ids=None):
    return block(x, segment_ids)


def _block_fn(remat: str):
    """``(block, x, segment_ids) -> block(x, segment_ids)``, rematerialised by the
    ``remat`` policy."""
    if remat == "none":
        return _run_block
    return nnx.remat(_run_block, policy=REMAT_POLICIES[remat])


class Transformer(nnx.Module):
    """The LM: ``model(tokens int32[B, T]) -> logits f32[B, T, V]``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        pd = DTYPES[cfg.param_dtype]
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                            cfg.init_std, pd)
        if cfg.scan_layers:
            # One Block whose parameters carry a leading [num_layers] axis (logical name
            # "layers"); layer i's init key is the i-th split of the params stream.
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(r):
                return Block(cfg, r)

            self.layers = stacked(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
        if not cfg.tie_embeddings:
            self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                                  cfg.init_std, pd)

    def __call__(self, tokens, segment_ids=None):
        x, w = self.hidden(tokens, segment_ids)
        logits = jnp.einsum("btd,vd->btv", x, w)
        return constrain(logits, ("act_batch", "act_length", "act_vocab")).astype(jnp.float32)

    def hidden(self, tokens, segment_ids=None):
        """``(h, w)``: final normalised hidden states [B, T, d] and the unembedding [V, d],
        both in the compute dtype, with ``logits = h w^T``."""
        dt = DTYPES[self.cfg.dtype]
        x = constrain(jnp.take(self.embed[...], tokens, axis=0).astype(dt), RESIDUAL)
        block_fn = _block_fn(self.cfg.remat)
        if self.cfg.scan_layers:
            x = nnx.scan(block_fn, in_axes=(0, nnx.Carry, None),
                         out_axes=nnx.Carry)(self.layers, x, segment_ids)
        else:
            for block in self.blocks:
                x = block_fn(block, x, segment_ids)
        x = self.final_norm(x)
        w = self.embed[...] if self.cfg.tie_embeddings else self.unembed[...].T
        return x, w.astype(dt)


# -- the pure-function API ---------------------------------------------------
Params = dict[str, Any]


def split(model: nnx.Module):
    """``(graphdef, params, rest)``: params as a plain nested dict of arrays."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


class ModelApply:
    """The pure model: ``apply(params, tokens, segment_ids=None) -> logits`` f32[B, T, V],
    ``apply.hidden(params, tokens, segment_ids=None) -> (h, w)`` (see
    :meth:`Transformer.hidden`) and ``apply.loss_chunk`` (the config's; read by
    ``mixjax.core.step.token_losses``). A plain function ``(params, tokens) -> logits``
    is an apply too: the loss then takes the unchunked path."""

    def __init__(self, graphdef, rest, loss_chunk: int = 0):
        self._graphdef, self._rest = graphdef, rest
        self.loss_chunk = loss_chunk

    def __call__(self, params: Params, tokens: jax.Array, segment_ids=None) -> jax.Array:
        return nnx.merge(self._graphdef, params, self._rest)(tokens, segment_ids)

    def hidden(self, params: Params, tokens: jax.Array, segment_ids=None):
        return nnx.merge(self._graphdef, params, self._rest).hidden(tokens, segment_ids)


def make_apply(graphdef, rest, loss_chunk: int = 0) -> ModelApply:
    """Returns the pure ``apply(params, tokens) -> logits`` (params: nested dict)."""
    return ModelApply(graphdef, rest, loss_chunk)


def init(cfg: TransformerConfig, seed: int):
    """Builds the model and returns ``(apply, params, logical_axes)``.

    ``logical_axes`` mirrors ``params`` with a tuple of logical axis names per leaf.
    """
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(param_state)
    apply = make_apply(graphdef, rest, cfg.loss_chunk)
    return apply, params, logical_axes(param_state)


def init_params(cfg: TransformerConfig, seed: int) -> Params:
    """The parameters ``init`` creates, as a pure function of ``seed`` (for ``jax.jit`` with
    ``out_shardings``: ``mixjax.parallel.sharding.init_params_sharded``)."""
    return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def stack_blocks(params: Params) -> Params:
    """Per-block params (``scan_layers=False``) -> the scanned layout (``layers``: [L, ...])."""
    out = {k: v for k, v in params.items() if k != "blocks"}
    blocks = [params["blocks"][i] for i in sorted(params["blocks"])]
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return out


def unstack_blocks(params: Params) -> Params:
    """The scanned layout -> per-block params (inverse of :func:`stack_blocks`)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    out["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(n)}
    return out


def abstract_init(cfg: TransformerConfig):
    """Like ``init`` without allocating: params are ``jax.ShapeDtypeStruct``s."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    return (make_apply(graphdef, rest, cfg.loss_chunk), nnx.to_pure_dict(param_state),
            logical_axes(param_state))


def logical_axes(param_state) -> dict:
    """Pure dict of logical axis-name tuples (one per parameter)."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(param_state))
    return jax.tree.map(lambda s: tuple(s), specs,
                        is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


def count_params(params: Params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
