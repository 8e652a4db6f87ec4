"""Worked example of docs/extending.md, section 5: a new model kind in one file.

A one-layer causal MLP-mixer LM (Tolstikhin et al. 2021, arXiv 2105.01601, with the
token-mixing matrix masked to be causal, as in gMLP's causal variant). With
``x = E[tokens]`` (B x S x D), ``RMS(h) = h / sqrt(mean(h^2) + eps) * scale``:

    h   = x + tril(W_tok[:S, :S]) RMS(x)          (token mixing, position t sees s <= t)
    h'  = h + gelu(RMS(h) W_in) W_out              (channel mixing)
    logits = RMS(h') E^T                           (tied embedding)

``--set model.kind=mlp_mixer --set model.hparams.max_len=64`` selects it; tests/
test_extending_example.py trains it for 3 steps. Its token-mixing axes have logical names
of their own (``seq_out``, ``seq_in``), declared unsharded through ``axis_rules``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixjax.models import registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerLMConfig:
    vocab_size: int
    d_model: int
    d_ff: int
    max_len: int            # longest input S the token-mixing matrix covers
    init_std: float = 0.02
    norm_eps: float = 1e-6


def _rms(h, scale, eps):
    return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps) * scale


@registry.register("mlp_mixer", axis_rules={"seq_out": None, "seq_in": None})
def build(model_cfg, vocab_size: int) -> registry.ModelSpec:
    hp = {"d_ff": 4 * model_cfg.d_model, "max_len": 128, **model_cfg.hparams}
    unknown = sorted(set(hp) - {"d_ff", "max_len"})
    if unknown:
        raise ValueError(f"mlp_mixer has no hyperparameters {unknown}; known: d_ff, max_len")
    cfg = MixerLMConfig(vocab_size=vocab_size, d_model=model_cfg.d_model, d_ff=int(hp["d_ff"]),
                        max_len=int(hp["max_len"]), init_std=model_cfg.init_std)
    v, d, f, n = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.max_len

    def init(seed: int):
        k = jax.random.split(jax.random.PRNGKey(seed), 4)
        normal = lambda key, shape: cfg.init_std * jax.random.normal(key, shape)  # noqa: E731
        return {"embed": normal(k[0], (v, d)), "token_mix": normal(k[1], (n, n)),
                "mlp_in": normal(k[2], (d, f)), "mlp_out": normal(k[3], (f, d)),
                "norm1": jnp.ones((d,)), "norm2": jnp.ones((d,)), "norm_out": jnp.ones((d,))}

    def apply(params, tokens):
        s = tokens.shape[1]
        if s > n:
            raise ValueError(f"mlp_mixer: input length {s} > model.hparams.max_len={n}")
        x = params["embed"][tokens]
        mix = jnp.tril(params["token_mix"][:s, :s])          # causal: row t mixes s <= t
        h = x + jnp.einsum("ts,bsd->btd", mix, _rms(x, params["norm1"], cfg.norm_eps))
        u = jax.nn.gelu(_rms(h, params["norm2"], cfg.norm_eps) @ params["mlp_in"])
        h = h + u @ params["mlp_out"]
        return _rms(h, params["norm_out"], cfg.norm_eps) @ params["embed"].T

    axes = {"embed": ("vocab", "embed"), "token_mix": ("seq_out", "seq_in"),
            "mlp_in": ("embed", "mlp"), "mlp_out": ("mlp", "embed"),
            "norm1": ("norm",), "norm2": ("norm",), "norm_out": ("norm",)}
    return registry.ModelSpec(config=cfg, init=init, apply=apply,
                              abstract_params=jax.eval_shape(init, 0), logical_axes=axes)
