"""Expert models in and out of files (docs/experts.md sec. 6): ``mixjax export`` of a MoE
and a DEMix run -> ``model.init_from`` gives back the parameters bit for bit and the same
logits; the DEMix naming restated key by key; a file with another expert count, another
model kind or another domain order is one error naming it."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import config as config_lib
from mixjax.models import demix, hf_io, moe
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import export

ARCH = dict(vocab_size=32, d_model=16, num_layers=2, num_heads=2, expert_d_ff=8,
            tie_embeddings=False)
KINDS = {"moe": moe.MoEConfig(**ARCH, num_experts=3, top_k=1, moe_every=2),
         "demix": demix.DEMixConfig(**ARCH, num_experts=2, moe_every=2)}


def _run(tmp_path, kind):
    """A run dir as `mixjax train` leaves it (config, run_info, one checkpoint) with random
    parameters of the tiny ``kind`` model, without training."""
    mcfg = KINDS[kind]
    c = config_lib.Config()
    c.model.kind = kind
    _, abstract, _ = (moe if kind == "moe" else demix).abstract_init(mcfg)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
    run = tmp_path / kind
    run.mkdir()
    (run / "config.json").write_text(config_lib.to_json(c))
    (run / "run_info.json").write_text(json.dumps(
        {"domains": ["a", "b"], "model": dataclasses.asdict(mcfg)}))
    ck = ckpt_lib.Checkpointer(run / "checkpoints")
    ck.save(3, {"params": params}, host={})
    ck.close()
    return run, mcfg, params, abstract


@pytest.mark.parametrize("kind", ["moe", "demix"])
def test_export_then_init_from_gives_identical_params_and_logits(tmp_path, kind):
    run, mcfg, params, abstract = _run(tmp_path, kind)
    path = export.export_run(run, "safetensors")
    meta = hf_io.load_safetensors_metadata(path)
    assert meta["mixjax_kind"] == kind and json.loads(meta["mixjax_model"])["num_experts"] \
        == mcfg.num_experts
    loaded, info = export.load_init_params(str(path), mcfg, abstract)
    for (where, x), y in zip(jax.tree_util.tree_leaves_with_path(loaded),
                             jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(where))
    apply = (moe if kind == "moe" else demix).abstract_init(mcfg)[0]
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % ARCH["vocab_size"]
    # demix: rows routed to experts 1 and 0 (one forward; the ensemble mixes the same experts)
    route = {} if kind == "moe" else {"domain_id": jnp.array([1, 0], jnp.int32)}
    logits = jax.jit(lambda p: apply(p, tokens, **route))
    np.testing.assert_array_equal(np.asarray(logits(jax.tree.map(jnp.asarray, loaded))),
                                  np.asarray(logits(jax.tree.map(jnp.asarray, params))))
    if kind == "demix":
        assert info["domains"] == ["a", "b"] == json.loads(meta["mixjax_domains"])
        # the naming, restated: torch [out, in] per expert and layer
        t = hf_io.load_safetensors(path)
        assert "model.layers.0.mlp.up_proj.weight" in t          # the dense block: Llama
        for i in (1,):
            w = params["blocks"][i]["demix"]
            for e in range(2):
                p = f"model.layers.{i}.demix.experts.{e}."
                np.testing.assert_array_equal(t[p + "w1.weight"], w["w_gate"][e].T)
                np.testing.assert_array_equal(t[p + "w3.weight"], w["w_up"][e].T)
                np.testing.assert_array_equal(t[p + "w2.weight"], w["w_down"][e].T)
        assert sum(v.size for v in t.values()) == sum(x.size for x in jax.tree.leaves(params))


def test_bad_files_are_one_error_naming_the_tensor_or_kind(tmp_path):
    run, mcfg, params, abstract = _run(tmp_path, "demix")
    path = str(export.export_run(run, "safetensors"))
    three = dataclasses.replace(mcfg, num_experts=3)
    with pytest.raises(hf_io.ExportError,
                       match=r"model\.layers\.1\.demix\.experts\.\*: the file has 2 experts, "
                             r"model\.hparams\.num_experts=3"):
        export.load_init_params(path, three, demix.abstract_init(three)[1])
    m = KINDS["moe"]
    with pytest.raises(hf_io.ExportError, match=r"model\.kind='demix' model; this run has "
                                                r"model\.kind='moe'"):
        export.load_init_params(path, m, moe.abstract_init(m)[1])
