"""Pretrained weights in and out: Hugging Face Llama naming, safetensors files.

The ``mixjax export`` command and reading a run's checkpoint live above the models, in
:mod:`mixjax.train.export` (models never import train/).

mixjax's transformer (mixjax.models.transformer) is a Llama: pre-norm RMSNorm
blocks, RoPE, SwiGLU MLP, no biases, tied or untied embeddings. Its parameters
map one-to-one onto ``transformers``' ``LlamaForCausalLM`` state dict
(``modeling_llama.py`` in huggingface/transformers; the reverse of
``convert_llama_weights_to_hf.py``)::

    embed        [V, d]       model.embed_tokens.weight        [V, d]
    attn_norm    [d]          model.layers.{i}.input_layernorm.weight
    attn.wq      [d, n, h]    model.layers.{i}.self_attn.q_proj.weight  [n*h, d]  (RoPE permuted)
    attn.wk      [d, n, h]    model.layers.{i}.self_attn.k_proj.weight  [n*h, d]  (RoPE permuted)
    attn.wv      [d, n, h]    model.layers.{i}.self_attn.v_proj.weight  [n*h, d]
    attn.wo      [n, h, d]    model.layers.{i}.self_attn.o_proj.weight  [d, n*h]
    mlp_norm     [d]          model.layers.{i}.post_attention_layernorm.weight
    mlp.w_gate   [d, f]       model.layers.{i}.mlp.gate_proj.weight     [f, d]
    mlp.w_up     [d, f]       model.layers.{i}.mlp.up_proj.weight       [f, d]
    mlp.w_down   [f, d]       model.layers.{i}.mlp.down_proj.weight     [d, f]
    final_norm   [d]          model.norm.weight
    unembed      [d, V]       lm_head.weight                            [V, d]  (untied only)

RoPE layout: mixjax rotates the interleaved pairs ``(x_{2i}, x_{2i+1})`` of a
head by ``p * base^(-2i/h)``; HF Llama rotates ``(x_i, x_{i+h/2})``
(``rotate_half``) by the same angle. So the head dimension of the query and key
projections is permuted, ``hf[..., j] = mixjax[..., perm[j]]`` with
``perm = [0, 2, 4, ..., h-2, 1, 3, ..., h-1]``; attention scores are unchanged
because q and k get the same permutation. Everything else is a reshape and a
transpose (torch ``Linear`` stores ``[out, in]``), so export followed by import
gives back the parameters bit for bit.

Not expressible as HF Llama (export refuses, naming the feature): the plain
GELU MLP (``model.mlp=gelu``; Llama's MLP is always gated). Importing refuses
grouped-query attention (``num_key_value_heads != num_attention_heads``),
biases, ``rope_scaling`` and an activation other than SiLU.

    mixjax export RUN_DIR --format hf [--out DIR] [--step N]
        -> DIR/config.json, model.safetensors, generation_config.json
           (+ tokenizer.json, tokenizer_config.json, special_tokens_map.json
            when the run used an ``hf`` tokenizer)
    mixjax export RUN_DIR --format safetensors [--out FILE]
        -> one safetensors file in the Llama naming (metadata: the mixjax model config)

``model.init_from`` (mixjax.train.loop) accepts a mixjax run dir
(:func:`mixjax.train.export.load_init_params`), such a safetensors file or an HF Llama
directory (see :func:`load_init_params`).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import numpy as np

from mixjax.models.transformer import TransformerConfig


class ExportError(ValueError):
    """The model cannot be written (or read) in the requested format; names the feature."""


def _perm(h: int) -> np.ndarray:
    return np.concatenate([np.arange(0, h, 2), np.arange(1, h, 2)])


def check_expressible(cfg: TransformerConfig) -> None:
    if cfg.mlp != "swiglu":
        raise ExportError(f"model.mlp={cfg.mlp!r}: HF Llama's MLP is always gated "
                          f"(SiLU(x W_gate) * x W_up); only model.mlp='swiglu' can be exported")


def to_llama(params: dict, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    """mixjax params -> ``{HF Llama name: array}`` (see the module docstring)."""
    check_expressible(cfg)
    n, h, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    perm = _perm(h)
    a = lambda x: np.asarray(x)
    out = {"model.embed_tokens.weight": a(params["embed"]),
           "model.norm.weight": a(params["final_norm"]["scale"])}
    for i in range(cfg.num_layers):
        b, p = params["blocks"][i], f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = a(b["attn_norm"]["scale"])
        out[p + "post_attention_layernorm.weight"] = a(b["mlp_norm"]["scale"])
        for name, key in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv")):
            w = a(b["attn"][key])
            if key != "wv":
                w = w[:, :, perm]
            out[p + f"self_attn.{name}.weight"] = np.ascontiguousarray(w.reshape(d, n * h).T)
        out[p + "self_attn.o_proj.weight"] = np.ascontiguousarray(a(b["attn"]["wo"]).reshape(n * h, d).T)
        if "mlp" not in b:   # a routed block (mixjax.models.moe.to_mixtral names its experts)
            continue
        for name, key in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down")):
            out[p + f"mlp.{name}.weight"] = np.ascontiguousarray(a(b["mlp"][key]).T)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(a(params["unembed"]).T)
    return out


def from_llama(tensors: dict[str, Any], cfg: TransformerConfig, where: str = "",
               experts: Callable | None = None) -> dict:
    """``{HF Llama name: array}`` -> mixjax params for ``cfg`` (inverse of :func:`to_llama`).

    Every expected tensor must be present with the expected shape; unexpected
    ones (other than ``rotary_emb`` buffers) are errors, each naming the tensor.
    ``experts(i, get) -> (key, subtree) | None``: block ``i``'s expert FFN read through
    ``get(name, shape)`` in place of its MLP (the expert kinds: ``moe.from_mixtral``,
    ``demix.from_hf``).
    """
    check_expressible(cfg)
    n, h, d, f, v = cfg.num_heads, cfg.head_dim, cfg.d_model, cfg.ff_dim, cfg.vocab_size
    inv = np.argsort(_perm(h))
    used = set()

    def get(name, shape):
        if name not in tensors:
            raise ExportError(f"{where}: no tensor {name!r} (a Llama model with "
                              f"{cfg.num_layers} layers, d_model {d}, vocab {v} was expected)")
        x = np.asarray(tensors[name])
        if tuple(x.shape) != tuple(shape):
            raise ExportError(f"{where}: tensor {name!r} has shape {tuple(x.shape)}, the model "
                              f"config needs {tuple(shape)}")
        used.add(name)
        return x

    params: dict[str, Any] = {"embed": get("model.embed_tokens.weight", (v, d)),
                              "final_norm": {"scale": get("model.norm.weight", (d,))},
                              "blocks": {}}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        attn = {}
        for name, key in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv")):
            w = get(p + f"self_attn.{name}.weight", (n * h, d)).T.reshape(d, n, h)
            attn[key] = np.ascontiguousarray(w[:, :, inv] if key != "wv" else w)
        attn["wo"] = np.ascontiguousarray(get(p + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d))
        routed = experts(i, get) if experts is not None else None
        if routed is None:
            mlp = ("mlp", {"w_gate": get(p + "mlp.gate_proj.weight", (f, d)).T,
                           "w_up": get(p + "mlp.up_proj.weight", (f, d)).T,
                           "w_down": get(p + "mlp.down_proj.weight", (d, f)).T})
        else:
            mlp = routed
        params["blocks"][i] = {
            "attn": attn, mlp[0]: {k: np.ascontiguousarray(x) for k, x in mlp[1].items()},
            "attn_norm": {"scale": get(p + "input_layernorm.weight", (d,))},
            "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight", (d,))}}
    if not cfg.tie_embeddings:
        params["unembed"] = np.ascontiguousarray(get("lm_head.weight", (v, d)).T)
    extra = sorted(k for k in set(tensors) - used if "rotary_emb" not in k
                   and not (cfg.tie_embeddings and k == "lm_head.weight"))
    if extra:
        raise ExportError(f"{where}: tensors the model has no place for: {extra[:6]}"
                          f"{' ...' if len(extra) > 6 else ''} (model.num_layers / "
                          f"model.tie_embeddings may not match)")
    return params


def hf_config(cfg: TransformerConfig, *, max_positions: int, tokenizer: dict | None = None) -> dict:
    """``config.json`` of the HF ``LlamaForCausalLM`` equivalent to ``cfg``."""
    check_expressible(cfg)
    tok = tokenizer or {}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_heads,
            "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": max_positions,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base, "rope_scaling": None,
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
            "torch_dtype": cfg.param_dtype, "pad_token_id": tok.get("pad_id"),
            "eos_token_id": tok.get("eos_id"), "bos_token_id": tok.get("bos_id")}


def _check_hf_config(hc: dict, cfg: TransformerConfig, where: str) -> None:
    """An HF config.json the mixjax model can load (or an error naming the mismatch)."""
    if hc.get("model_type") not in (None, "llama"):
        raise ExportError(f"{where}: model_type {hc.get('model_type')!r} is not 'llama'")
    unsupported = [
        ("num_key_value_heads", hc.get("num_key_value_heads", hc.get("num_attention_heads")),
         hc.get("num_attention_heads"), "grouped-query attention"),
        ("hidden_act", hc.get("hidden_act", "silu"), "silu", "an MLP activation other than SiLU"),
        ("attention_bias", bool(hc.get("attention_bias", False)), False, "attention biases"),
        ("mlp_bias", bool(hc.get("mlp_bias", False)), False, "MLP biases"),
        ("rope_scaling", hc.get("rope_scaling"), None, "RoPE scaling")]
    for key, got, want, feature in unsupported:
        if got != want:
            raise ExportError(f"{where}: config.json {key}={got!r}: mixjax's transformer has no "
                              f"{feature}")
    mine = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "tie_word_embeddings": cfg.tie_embeddings}
    names = {"vocab_size": "model.vocab_size", "hidden_size": "model.d_model",
             "intermediate_size": "model.d_ff", "num_hidden_layers": "model.num_layers",
             "num_attention_heads": "model.num_heads", "tie_word_embeddings": "model.tie_embeddings"}
    for key, want in mine.items():
        got = hc.get(key, True if key == "tie_word_embeddings" else None)
        if got != want:
            raise ExportError(f"{where}: config.json {key}={got!r} but {names[key]} gives {want!r}; "
                              f"set {names[key]}={got!r}")
    if "rope_theta" in hc and float(hc["rope_theta"]) != float(cfg.rope_base):
        raise ExportError(f"{where}: config.json rope_theta={hc['rope_theta']} but "
                          f"model.rope_base={cfg.rope_base}")


def save_safetensors(tensors: dict[str, np.ndarray], path: pathlib.Path,
                     metadata: dict[str, str] | None = None) -> None:
    from safetensors.flax import save_file
    import jax.numpy as jnp
    save_file({k: jnp.asarray(v) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.flax import load_file
    return {k: np.asarray(v) for k, v in load_file(str(path)).items()}


def load_safetensors_metadata(path: str | pathlib.Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when it has none)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        return dict(f.metadata() or {})


def load_init_params(source: str, cfg: TransformerConfig, abstract_params: dict,
                     from_tensors: Callable | None = None) -> tuple[dict, dict]:
    """``(params, info)`` for ``model.init_from``: a safetensors file or an HF Llama dir (a
    mixjax run dir is read by :func:`mixjax.train.export.load_init_params`, which knows
    checkpoints).

    The parameters get ``abstract_params``' dtypes; shapes must match exactly.
    ``from_tensors(tensors, cfg, where)``: the naming of another model kind (default
    :func:`from_llama`; an HF directory is a Llama and loads into the transformer only).
    """
    import jax
    path = pathlib.Path(source)
    where = f"model.init_from={source!r}"
    if path.is_dir() and (path / "config.json").exists() and (path / "checkpoints").exists():
        raise ExportError(f"{where}: a mixjax run dir; mixjax.train.export.load_init_params "
                          "reads its checkpoint")
    elif path.is_dir() and from_tensors is not None:
        raise ExportError(f"{where}: an HF directory holds a Llama (model.kind='transformer'); "
                          "this model kind loads a safetensors file (`mixjax export "
                          "--format safetensors`)")
    elif path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not (path / "config.json").exists() or not files:
            raise ExportError(f"{where}: directory is neither a mixjax run dir nor an HF Llama "
                              f"dir (config.json + *.safetensors)")
        _check_hf_config(json.loads((path / "config.json").read_text()), cfg, where)
        tensors = {}
        for f in files:
            tensors.update(load_safetensors(f))
        params = from_llama(tensors, cfg, where)
        info = {"kind": "hf", "path": str(path), "files": [f.name for f in files]}
    elif path.is_file():
        try:
            tensors = load_safetensors(path)
        except Exception as e:
            raise ExportError(f"{where}: not a safetensors file ({type(e).__name__}: {e})") from None
        params = (from_tensors or from_llama)(tensors, cfg, where)
        info = {"kind": "safetensors", "path": str(path)}
    else:
        raise FileNotFoundError(f"{where}: no such file or directory")
    params = jax.tree.map(lambda x, a: np.asarray(x).astype(a.dtype), params, abstract_params)
    return params, info


