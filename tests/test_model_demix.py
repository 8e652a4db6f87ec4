"""DEMix domain-expert layers (mixjax.models.demix): the layer, the domain posterior, the
cached prior and the expert surgery against numpy restatements; the train step routes rows
by domain_id; the ensemble is a causal LM; bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import cli, mixing
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from mixjax.models import demix

CFG = demix.DEMixConfig(vocab_size=16, d_model=8, num_layers=1, num_heads=2, d_ff=8,
                        num_experts=3)


def _silu(v):
    return v / (1 + np.exp(-v))


def test_layer_equals_numpy_per_row_expert_and_mixture():
    rng = np.random.default_rng(0)
    e, d, f = 3, 4, 5
    w = {"w_gate": rng.normal(size=(e, d, f)), "w_up": rng.normal(size=(e, d, f)),
         "w_down": rng.normal(size=(e, f, d))}
    x = rng.normal(size=(2, 3, d))
    ids = np.array([2, 0])
    mix = rng.dirichlet(np.ones(e), size=(2, 3))
    ffn = lambda j, v: (_silu(v @ w["w_gate"][j]) * (v @ w["w_up"][j])) @ w["w_down"][j]  # noqa
    want_rows = np.stack([ffn(ids[b], x[b]) for b in range(2)])
    want_mix = sum(mix[..., j:j + 1] * ffn(j, x) for j in range(e))
    with jax.enable_x64(True):
        wj = {k: jnp.asarray(v) for k, v in w.items()}
        rows, mixed = jax.jit(lambda w, x: (demix.demix_ffn(w, x, domain_id=jnp.asarray(ids)),
                                            demix.demix_ffn(w, x, mix=jnp.asarray(mix))))(
            wj, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(rows), want_rows, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(mixed), want_mix, rtol=1e-12)


def test_prefix_posterior_and_cached_prior_equal_numpy():
    rng = np.random.default_rng(1)
    lp = -rng.gamma(2.0, 1.0, size=(3, 5, 4))                 # [E, N, S-1]
    log_prior = np.log(np.array([0.5, 0.3, 0.2]))
    got = np.asarray(jax.jit(demix.prefix_posterior)(jnp.asarray(lp), jnp.asarray(log_prior)))
    for b in range(5):
        for t in range(5):
            logit = log_prior + lp[:, b, :t].sum(1)
            want = np.exp(logit - logit.max())
            np.testing.assert_allclose(got[b, t], want / want.sum(), rtol=1e-5)
    # the cached prior: sequence posteriors accumulated with decay^(n+1), in order
    prior = np.ones(3)                                          # exp(log prior = 0)
    for n in range(4):
        logit = np.log(prior) + lp[:, n].sum(1)
        post = np.exp(logit - logit.max())
        prior = 0.3 ** (n + 1) * prior + post / post.sum()
    got = np.asarray(jax.jit(lambda lp: demix.cached_prior(lp, decay=0.3, max_sequences=4))(
        jnp.asarray(lp, jnp.float32)))
    np.testing.assert_allclose(got, prior / prior.sum(), rtol=1e-5)


def test_train_step_routes_by_domain_and_ensemble_is_causal():
    apply, params, axes = demix.init(CFG, 0)
    assert axes["blocks"][0]["demix"]["w_up"] == ("experts", "embed", "mlp")
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 7), 1, 16)
    domain_id = jnp.asarray([0, 2, 2, 0], jnp.int32)
    mixer, tx = mixing.get("uniform"), optax.sgd(0.5)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=3, pad_id=0,
                                    jit=False)
    later = tokens.at[:, 5:].set(3)

    @jax.jit
    def run(params):
        new, m = step(state_lib.init_state(params, tx, mixer, 3, 0),
                      {"tokens": tokens, "domain_id": domain_id,
                       "sampling_weights": jnp.full((3,), 1 / 3)})
        by_row = apply(params, tokens[:, :-1], domain_id=domain_id)
        one_hot_prior = jnp.log(jnp.asarray([1e-30, 1.0, 1e-30]))
        both = apply(params, jnp.concatenate([tokens, later]))    # uniform prior
        return (new.params, m["loss"], by_row, apply.expert_logits(params, tokens, 1),
                apply.ensemble(params, tokens, one_hot_prior), both[:4], both[4:])

    new, loss, by_row, expert1, ens1, ens, ens_later = run(params)
    moved = lambda j: float(jnp.abs(new["blocks"][0]["demix"]["w_up"][j]   # noqa: E731
                                    - params["blocks"][0]["demix"]["w_up"][j]).max())
    assert moved(0) > 0 and moved(2) > 0 and moved(1) == 0     # no row of domain 1
    ce = -jnp.take_along_axis(jax.nn.log_softmax(by_row), tokens[:, 1:, None], -1)
    np.testing.assert_allclose(float(loss), float(ce.mean()), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ens1), np.asarray(expert1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ens[:, :5]), np.asarray(ens_later[:, :5]))
    assert not np.allclose(np.asarray(ens[:, 5:]), np.asarray(ens_later[:, 5:]))


def test_add_and_remove_expert():
    _, params, _ = demix.init(CFG, 0)
    grown = demix.add_expert(params, 1)
    w = grown["blocks"][0]["demix"]["w_gate"]
    assert w.shape[0] == 4
    np.testing.assert_array_equal(np.asarray(w[3]), np.asarray(w[1]))
    back = demix.remove_expert(grown, 3)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert grown["blocks"][0]["attn"]["wq"] is params["blocks"][0]["attn"]["wq"]


def test_num_experts_must_match_the_domains(tmp_path, capsys):
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
    rc = cli.main(["train", str(path), "--set", "model.kind=demix", "--set",
                   "model.hparams={'num_experts': 3}",
                   "--set", f"train.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "model.hparams.num_experts=3 must equal the number of domains (2" in err
    with pytest.raises(ValueError, match=r"model\.hparams\.top_k"):
        demix.config_from(type("M", (), {"hparams": {"top_k": 2}})(), 16)


@pytest.mark.slow
def test_cached_prior_ensemble_not_worse_than_best_single_expert_on_pure_domains():
    """experiments/demix_ensemble.py, 3 seeds x 3 synthetic domains (docs/experts.md): the
    ensemble under the cached prior is within 1e-4 nats of the best single expert on each
    pure held-out domain (the uniform-prior ensemble is worse there: its posterior starts
    uniform at every sequence)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "demix_ensemble.py"
    spec = importlib.util.spec_from_file_location("demix_ensemble", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for seed, domain, best, uniform, cached in mod.main(["--seeds", "3", "--steps", "150"]):
        assert cached <= best + 1e-4, (seed, domain, best, cached)
        assert uniform > best, (seed, domain, best, uniform)


def _fake_run(tmp_path):
    """A DEMix run dir as `mixjax train` leaves it (config, run_info, one checkpoint),
    without training: a tiny byte-vocabulary model with 3 domain experts."""
    import dataclasses
    from mixjax import config as config_lib
    from mixjax.train import checkpoint as ckpt_lib
    c = config_lib.Config()
    c.model.kind, c.model.d_model, c.model.num_layers, c.model.num_heads = "demix", 8, 1, 2
    c.model.hparams = {"num_experts": 3, "expert_d_ff": 8}
    c.data.seq_len = 16
    cfg = demix.DEMixConfig(vocab_size=264, d_model=8, num_layers=1, num_heads=2,
                            num_experts=3, expert_d_ff=8)
    _, params, _ = demix.init(cfg, 0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config_lib.to_json(c))
    (run / "run_info.json").write_text(json.dumps({
        "domains": ["a", "b", "c"], "model": dataclasses.asdict(cfg)}))
    ck = ckpt_lib.Checkpointer(run / "checkpoints")
    ck.save(1, {"params": params}, host={})
    ck.close()
    return run, cfg, params


def test_cli_adds_and_removes_experts_and_init_from_loads_them(tmp_path, capsys):
    from mixjax.train import demix_cli, export
    run, cfg, params = _fake_run(tmp_path)
    rc = cli.main(["demix", str(run), "--remove", "b", "--out", str(tmp_path / "two.st")])
    assert rc == 0 and "experts in order: a, c" in capsys.readouterr().out
    small = dataclasses.replace(cfg, num_experts=2)
    loaded, info = export.load_init_params(str(tmp_path / "two.st"), small,
                                           demix.abstract_init(small)[1])
    assert info["domains"] == ["a", "c"]
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(demix.remove_expert(params, 1))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(demix_cli.ExportError, match=r"has 2 experts, .*num_experts=3"):
        export.load_init_params(str(tmp_path / "two.st"), cfg, demix.abstract_init(cfg)[1])
    docs = tmp_path / "new.jsonl"
    docs.write_text("".join(json.dumps({"text": "some new text " * 3}) + "\n" for _ in range(4)))
    path, domains, how = demix_cli.edit_run(run, add="d", closest_on=docs,
                                            out=tmp_path / "four.st")
    assert domains == ["a", "b", "c", "d"] and how["copied_from"] in ("a", "b", "c")
    capsys.readouterr()
    for argv, msg in ((["--add", "d"], "exactly one of --from"),
                      (["--add", "a", "--from", "b"], "already has an expert"),
                      (["--remove", "z"], "not a domain of the run")):
        rc = cli.main(["demix", str(run), *argv, "--out", str(tmp_path / "x.st")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and msg in err, err
