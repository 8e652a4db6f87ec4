"""mixjax logits == transformers' LlamaForCausalLM logits on the exported weights (tiny model).

Needs ``torch`` and ``transformers`` (not CI extras); skipped cleanly when either is absent.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402

from mixjax.models import hf_io, transformer  # noqa: E402


@pytest.mark.parametrize("tie", [True, False])
def test_llama_logits_match(tmp_path, tie):
    cfg = transformer.TransformerConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4,
                                        tie_embeddings=tie, rope_base=500.0, norm_eps=1e-5,
                                        init_std=0.2)
    apply, params, _ = transformer.init(cfg, seed=1)
    # non-trivial norm scales, so a swapped norm would show
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * (1 + 0.3 * np.sin(np.arange(x.size).reshape(x.shape)))
        if "scale" in jax.tree_util.keystr(p) else x, params)
    out = tmp_path / "hf"
    out.mkdir()
    hf_io.save_safetensors(hf_io.to_llama(params, cfg), out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_io.hf_config(cfg, max_positions=64)))
    model = transformers.LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
    model.eval()
    tokens = np.random.default_rng(0).integers(0, 128, size=(2, 24)).astype(np.int32)
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    got = np.asarray(apply(params, tokens))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # and back: the HF directory loads into the same parameters
    _, abstract, _ = transformer.abstract_init(cfg)
    back, info = hf_io.load_init_params(str(out), cfg, abstract)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
