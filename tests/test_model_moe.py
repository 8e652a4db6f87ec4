"""The mixture-of-experts transformer (mixjax.models.moe): the routed FFN against a plain
numpy restatement (token order, capacity, dropped assignments, auxiliary losses), its
gradient against finite differences, the auxiliary losses in the train loss, bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import cli
from mixjax.config import Config, ConfigError
from mixjax.core import step as step_lib
from mixjax.models import moe, registry


def _cfg(**kw):
    base = dict(vocab_size=16, d_model=8, num_layers=1, num_heads=2, d_ff=5, num_experts=4,
                top_k=2, capacity_factor=0.5, aux_loss_coef=0.3, z_loss_coef=0.2)
    return moe.MoEConfig(**{**base, **kw})


def _weights(cfg, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    d, f, e = cfg.d_model, cfg.expert_ff, cfg.num_experts
    return {"router": r.normal(0, 1.0, (d, e)).astype(dtype),
            "w_gate": r.normal(0, 0.5, (e, d, f)).astype(dtype),
            "w_up": r.normal(0, 0.5, (e, d, f)).astype(dtype),
            "w_down": r.normal(0, 0.5, (e, f, d)).astype(dtype)}


def numpy_moe(w, x, cfg):
    """The routed FFN restated: each sequence's tokens in order, each token's k choices in
    order, an expert takes at most C tokens; the rest are dropped."""
    b_, s_, d = x.shape
    e_, k, cap = cfg.num_experts, cfg.top_k, cfg.capacity(s_)
    silu = lambda v: v / (1 + np.exp(-v))   # noqa: E731
    y, aux = np.zeros_like(x), np.zeros((b_, s_))
    load, dropped = np.zeros((b_, e_)), np.zeros(b_)
    for b in range(b_):
        logits = x[b] @ w["router"]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        fill = np.zeros(e_, int)
        counts = np.zeros(e_)
        for s in range(s_):
            choice = np.argsort(-p[s], kind="stable")[:k]
            gate = p[s, choice] if k == 1 else p[s, choice] / p[s, choice].sum()
            for j, e in enumerate(choice):
                counts[e] += 1
                if fill[e] >= cap:
                    dropped[b] += 1
                    continue
                fill[e] += 1
                h = silu(x[b, s] @ w["w_gate"][e]) * (x[b, s] @ w["w_up"][e])
                y[b, s] += gate[j] * (h @ w["w_down"][e])
        load[b] = fill
        f = counts / s_
        lse = np.log(np.exp(logits).sum(1))
        for s in range(s_):
            aux[b, s] = (cfg.aux_loss_coef * e_ * np.sum(f * p[s])
                         + cfg.z_loss_coef * lse[s] ** 2)
    return y, aux, load, dropped


@pytest.mark.parametrize("top_k,factor", [(2, 0.5), (1, 0.75), (2, 4.0)])
def test_moe_ffn_equals_numpy_reference_with_dropped_tokens(top_k, factor):
    cfg = _cfg(top_k=top_k, capacity_factor=factor)
    w = _weights(cfg)
    x = np.random.default_rng(1).normal(0, 1, (3, 8, cfg.d_model))
    with jax.enable_x64(True):
        got = [np.asarray(a) for a in jax.jit(lambda w, x: moe.moe_ffn(w, x, cfg))(
            {k: jnp.asarray(v) for k, v in w.items()}, jnp.asarray(x))]
    want = numpy_moe(w, x, cfg)
    for name, g, ref in zip(("y", "aux", "kept", "dropped"), got, want):
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12, err_msg=name)
    # the capacity bites in the small-factor cases and not with a factor of 4
    assert (want[3].sum() > 0) == (factor < 1)
    # a token's mean auxiliary term over a sequence is the paper's L_lb / L_z combination
    assert cfg.capacity(8) == min(8, int(np.ceil(factor * 8 * top_k / 4)))


def test_moe_ffn_gradient_matches_finite_differences():
    cfg = _cfg()
    w = _weights(cfg, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 6, cfg.d_model))
    r_y, r_a = rng.normal(size=x.shape), rng.normal(size=x.shape[:2])
    with jax.enable_x64(True):
        @jax.jit
        def f(w, x):
            y, aux, _, _ = moe.moe_ffn(w, x, cfg)
            return jnp.sum(y * r_y) + jnp.sum(aux * r_a)

        wj = {k: jnp.asarray(v) for k, v in w.items()}
        gw, gx = jax.grad(f, argnums=(0, 1))(wj, jnp.asarray(x))
        eps = 1e-6
        for name in w:
            d = rng.normal(size=w[name].shape)
            plus = {**wj, name: wj[name] + eps * d}
            minus = {**wj, name: wj[name] - eps * d}
            fd = (f(plus, x) - f(minus, x)) / (2 * eps)
            np.testing.assert_allclose(np.sum(np.asarray(gw[name]) * d), fd, rtol=1e-6,
                                       err_msg=name)
        d = rng.normal(size=x.shape)
        fd = (f(wj, x + eps * d) - f(wj, x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(np.sum(np.asarray(gx) * d), fd, rtol=1e-6)


def test_aux_losses_enter_the_gradient_not_the_loss_values():
    _, abstract, axes = moe.abstract_init(_cfg(num_layers=2, moe_every=2))
    assert axes["blocks"][1]["moe"]["w_up"] == ("experts", "embed", "mlp")
    assert "mlp" in abstract["blocks"][0] and "moe" not in abstract["blocks"][0]   # dense
    cfg = _cfg(capacity_factor=1.0)
    apply, params, _ = moe.init(cfg, 0)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 1, 16)
    plain = lambda p, x: apply(p, x)   # noqa: E731  (no with_aux: the plain cross-entropy)

    def objective(p):
        tl, tm = step_lib.token_losses(apply, p, tokens, 0)
        return jnp.sum(tl) / jnp.sum(tm)

    def by_hand(p):
        out, aux = apply.with_aux(p, tokens[:, :-1])
        ce = -jnp.take_along_axis(jax.nn.log_softmax(out), tokens[:, 1:, None], -1)[..., 0]
        return jnp.mean(ce) + jnp.mean(aux)

    g, want, (tl, _), (want_tl, _), routing = jax.jit(lambda p: (
        jax.grad(objective)(p), jax.grad(by_hand)(p), step_lib.token_losses(apply, p, tokens, 0),
        step_lib.token_losses(plain, p, tokens, 0), apply.routing(p, tokens[:, :-1])))(params)
    np.testing.assert_array_equal(np.asarray(tl), np.asarray(want_tl))
    router = want["blocks"][0]["moe"]["router"]
    assert float(jnp.abs(router).max()) > 0
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-7)
    assert routing["kept"].shape == (1, 3, 4) and routing["dropped"].shape == (1, 3)
    np.testing.assert_allclose(np.asarray(routing["kept"].sum(-1) + routing["dropped"]),
                               cfg.top_k * 8)


@pytest.mark.parametrize("hparams,culprit", [
    ({"routing": "expert_choice"}, "model.hparams.routing"),
    ({"top_k": 5}, "model.hparams.top_k=5 > model.hparams.num_experts=4"),
    ({"capacity_factor": 0.0}, "model.hparams.capacity_factor"),
    ({"capacity_factor": -1}, "model.hparams.capacity_factor"),
    ({"capacity_factor": "big"}, "model.hparams.capacity_factor"),
    ({"experts": 4}, "model.hparams.experts"),
])
def test_bad_hparams_name_the_key(hparams, culprit):
    from mixjax.train import checks
    cfg = Config()
    cfg.model.kind = "moe"
    cfg.model.hparams = {"num_experts": 4, **hparams}
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        checks._check_model_kind(cfg)
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        registry.build(cfg.model, 16)


def test_cli_bad_moe_hparam_is_one_line_exit_2(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a", "b"):
        (corpus / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"doc {i} words"}) + "\n" for i in range(40)))
    path = tmp_path / "c.py"
    path.write_text("from mixjax.config import Config\n\ndef get_config():\n"
                    f"    cfg = Config()\n    cfg.data.corpus = {str(corpus)!r}\n"
                    "    return cfg\n")
    capsys.readouterr()
    rc = cli.main(["train", str(path), "--set", "model.kind=moe", "--set",
                   "model.hparams={'num_experts': 2, 'top_k': 3}",
                   "--set", f"train.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "model.hparams.top_k=3 > model.hparams.num_experts=2" in err
    assert not (tmp_path / "run").exists()


def test_export_names_experts_as_mixtral_and_refuses_other_kinds(tmp_path):
    from mixjax import config as config_lib
    from mixjax.models import hf_io
    from mixjax.train import export
    cfg = _cfg(num_layers=2, moe_every=2)
    _, abstract, _ = moe.abstract_init(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), abstract)
    out = moe.to_mixtral(params, cfg)
    m, p = params["blocks"][1]["moe"], "model.layers.1.block_sparse_moe."
    np.testing.assert_array_equal(out[p + "gate.weight"], m["router"].T)
    for e in range(cfg.num_experts):
        np.testing.assert_array_equal(out[p + f"experts.{e}.w1.weight"], m["w_gate"][e].T)
        np.testing.assert_array_equal(out[p + f"experts.{e}.w3.weight"], m["w_up"][e].T)
        np.testing.assert_array_equal(out[p + f"experts.{e}.w2.weight"], m["w_down"][e].T)
    assert "model.layers.0.mlp.up_proj.weight" in out            # the dense block: Llama names
    assert not any(k.startswith("model.layers.1.mlp.") for k in out)
    n_out = sum(v.size for v in out.values())
    assert n_out == sum(x.size for x in jax.tree.leaves(params))   # every parameter, once
    # the Llama format for the expert kinds: one clear error before any checkpoint is read
    for kind, fmt, msg in (("demix", "hf", "exports as --format safetensors"),
                           ("moe", "hf", "exports as --format safetensors")):
        run = tmp_path / kind
        run.mkdir()
        c = Config()
        c.model.kind = kind
        (run / "config.json").write_text(config_lib.to_json(c))
        (run / "run_info.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
        with pytest.raises(hf_io.ExportError, match=msg):
            export.export_run(run, fmt)
