"""Attention implementations (mixjax.models.transformer.attention): the xla path against a
plain einsum reference, packed documents (segment ids) against separate runs, the ``auto``
resolution and the config check of ``model.attention``."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.models import transformer as T

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_attention(q, k, v, segment_ids=None):
    """softmax(q k^T / sqrt(H) + mask) v in fp32 with einsums; mask = causal (& segment)."""
    q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
    t, h = q.shape[1], q.shape[-1]
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    allowed = np.tril(np.ones((t, t), bool))[None, None]
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        allowed = allowed & (seg[:, None, :, None] == seg[:, None, None, :])
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def qkv(dtype, b=2, t=16, n=2, h=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (b, t, n, h), jnp.float32).astype(dtype) for key in ks]


@pytest.mark.parametrize("with_segments", [False, True])
def test_xla_attention_matches_einsum_reference_in_bf16(with_segments):
    q, k, v = qkv(jnp.bfloat16)
    seg = jnp.asarray([[0] * 5 + [1] * 7 + [2] * 4, [0] * 16], jnp.int32) if with_segments else None
    got = jax.jit(lambda q, k, v, s: T.attention(q, k, v, implementation="xla",
                                                 segment_ids=s))(q, k, v, seg)
    assert got.dtype == jnp.bfloat16
    want = reference_attention(q, k, v, seg)   # the same bf16-rounded inputs, fp32 math
    # bf16 has an 8-bit mantissa: the output rounding alone is up to 2^-8 relative
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2, rtol=2e-2)
    # and in fp32 the two agree to fp32 rounding
    q32, k32, v32 = (a.astype(jnp.float32) for a in (q, k, v))
    got32 = T.attention(q32, k32, v32, implementation="xla", segment_ids=seg)
    np.testing.assert_allclose(np.asarray(got32), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_packed_documents_equal_separate_runs(scan_layers):
    cfg = T.TransformerConfig(vocab_size=24, d_model=16, num_layers=2, num_heads=2,
                              scan_layers=scan_layers, attention="xla")
    apply, params, _ = T.init(cfg, seed=3)
    apply = jax.jit(apply)
    docs = np.random.default_rng(0).integers(0, 24, (2, 8)).astype(np.int32)
    packed = jnp.asarray(docs.reshape(1, 16))                  # two documents in one row
    seg = jnp.asarray([[0] * 8 + [1] * 8], jnp.int32)
    got = np.asarray(apply(params, packed, seg)).reshape(2, 8, -1)
    alone = np.asarray(apply(params, jnp.asarray(docs)))       # each document on its own row
    # RoPE angles differ by the document's offset: only their rounding separates the two
    np.testing.assert_allclose(got, alone, atol=2e-5, rtol=1e-5)
    # without segment ids the second document does see the first
    assert np.abs(np.asarray(apply(params, packed))[0, 8:] - alone[1]).max() > 1e-3


def test_auto_resolution():
    assert jax.default_backend() == "cpu"
    assert T.resolve_attention("auto", jnp.bfloat16) == "xla"               # this machine
    assert T.resolve_attention("auto", jnp.bfloat16, backend="gpu") == "cudnn"
    assert T.resolve_attention("auto", jnp.float16, backend="cuda") == "cudnn"
    # cuDNN flash attention takes bf16/fp16 only: an fp32 model falls back
    assert T.resolve_attention("auto", jnp.float32, backend="gpu") == "xla"
    assert T.resolve_attention("cudnn", jnp.float32, backend="gpu") == "xla"
    assert T.resolve_attention("xla", jnp.bfloat16, backend="gpu") == "xla"
    splash = T._splash_available()
    assert T.resolve_attention("auto", jnp.bfloat16, backend="tpu") == ("splash" if splash
                                                                        else "xla")


def test_model_attention_choice_reaches_the_kernel(monkeypatch):
    """The config's choice is what Attention passes to jax.nn.dot_product_attention."""
    seen = []
    real = jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kw):
        seen.append(implementation)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(T, "resolve_attention", lambda choice, dtype: f"<{choice}>")
    cfg = T.TransformerConfig(vocab_size=16, d_model=8, num_layers=1, num_heads=2,
                              attention="cudnn")
    apply, params, _ = T.abstract_init(cfg)                       # shapes only
    jax.eval_shape(apply, params, jnp.zeros((1, 4), jnp.int32))    # traced, not compiled
    assert seen == ["<cudnn>"]


def test_bad_attention_is_a_config_error_with_exit_2(capsys):
    from mixjax.cli import main
    rc = main(["train", str(ROOT / "configs" / "lm_tiny_uniform.py"),
               "--set", "model.attention=bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and "'model.attention'" in err and "bogus" in err
    with pytest.raises(ValueError, match="model.attention"):
        T.TransformerConfig(vocab_size=8, attention="flash")


def test_forward_mode_tracing_uses_xla_attention(monkeypatch):
    """The jvp gradient engine traces the model inside forward_mode.tracing(): a model set
    to cuDNN (a custom_vjp kernel, which jax.jvp cannot differentiate) runs xla there and
    cuDNN in the reverse-mode pass."""
    from mixjax.mixing import grads
    from mixjax.core import step as step_lib
    seen = []
    real = jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kw):
        seen.append(implementation)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    cfg = T.TransformerConfig(vocab_size=16, d_model=8, num_layers=1, num_heads=2,
                              dtype="bfloat16", attention="cudnn")
    apply, params, _ = T.abstract_init(cfg)
    tokens = jnp.zeros((4, 9), jnp.int32)
    batch = {"tokens": tokens, "domain_id": jnp.asarray([0, 0, 1, 1], jnp.int32),
             "target_tokens": tokens[:2]}
    stats = grads.make_grad_stats(grads.GradConfig(strategy="jvp"), 2)

    def run(p):
        gs = stats(lambda q, b: step_lib.token_losses(apply, q, b["tokens"], 15), p, batch,
                   frozenset({"grad_dot"}))
        return gs["grad_dot"], gs.combine(jnp.ones(2))

    jax.eval_shape(run, params)                                   # traced only
    assert "xla" in seen and "cudnn" in seen                       # jvp pass; combine's VJP
    with T.forward_mode.tracing():
        assert T.resolve_attention("cudnn", jnp.bfloat16, backend="gpu") == "xla"
    assert T.resolve_attention("cudnn", jnp.bfloat16, backend="gpu") == "cudnn"
