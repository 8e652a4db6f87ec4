"""Resuming a DEMix run with an expert added or removed (mixjax.train.demix_state,
``mixjax demix --out-run``): the edited Adam moments, mixer state and sampler state against
numpy restatements of the domain map; a written run's checkpoint restores onto the new
run's state at the same step; bad input is one line naming the key, exit 2. The slow test
trains, edits and resumes for real."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import cli, mixing
from mixjax import config as config_lib
from mixjax.config import ConfigError
from mixjax.core import state as state_lib
from mixjax.models import demix
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import demix_state

MCFG = demix.DEMixConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, expert_d_ff=8,
                         num_experts=3)


def _random(tree, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype)
                        if jnp.issubdtype(a.dtype, jnp.floating) else
                        np.arange(np.prod(a.shape, dtype=int)).reshape(a.shape).astype(a.dtype),
                        tree)


def _adam(opt_state):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)][0]


def test_domain_map_gathers_moments_mixer_and_sampler_state_as_numpy_does():
    _, abstract, _ = demix.abstract_init(MCFG)
    params = _random(abstract)
    tx, _ = state_lib.make_optimizer(config_lib.Config().optim, 10)
    opt = _random(jax.eval_shape(tx.init, abstract), 1)       # nonzero mu, nu (no eager ops)
    for edit, want_domains, want_index in (({"add": "d", "source": 1}, list("abcd"), [0, 1, 2, 1]),
                                           ({"remove": "b"}, list("ac"), [0, 2])):
        domains, index = demix_state.domain_map(list("abc"), **edit)
        assert domains == want_domains and index.tolist() == want_index
        new = _adam(demix_state.edit_opt_state(tx, opt, params, index))
        old = _adam(opt)
        assert int(new.count) == int(old.count)
        for moment in ("mu", "nu"):
            a, b = getattr(old, moment), getattr(new, moment)
            for k in ("w_gate", "w_up", "w_down"):   # expert j of the new run = old index[j]
                np.testing.assert_array_equal(b["blocks"][0]["demix"][k],
                                              np.asarray(a["blocks"][0]["demix"][k])[want_index])
            np.testing.assert_array_equal(b["blocks"][0]["attn"]["wq"], a["blocks"][0]["attn"]["wq"])
            np.testing.assert_array_equal(b["embed"], a["embed"])
    # mixer state: aioli keeps K x K graphs and per-domain vectors
    kw = dict(token_counts=np.ones(3, np.int64), apply_to=None, total_steps=10,
              tokens_per_step=64, num_targets=None)
    mixer = mixing.build("aioli", {}, domains=tuple("abc"), **kw)
    old = {k: np.abs(v) + 0.1 if k in ("weights", "weight_sum") else v
           for k, v in _random(jax.eval_shape(lambda: mixer.init(3)), 2).items()}
    old["num_weights"] = np.float32(4.0)
    fresh = jax.eval_shape(lambda: mixer.init(4))
    idx = np.array([0, 1, 2, 1])
    got = demix_state.edit_mix_state(old, fresh, idx, 3)
    np.testing.assert_array_equal(got["graph"], old["graph"][idx][:, idx])
    np.testing.assert_array_equal(got["prev_loss"], old["prev_loss"][idx])
    np.testing.assert_allclose(got["weights"], old["weights"][idx] / old["weights"][idx].sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(got["weight_sum"].sum(), 4.0, rtol=1e-6)
    np.testing.assert_allclose(got["weight_sum"] / got["weight_sum"][0],
                               old["weight_sum"][idx] / old["weight_sum"][0], rtol=1e-6)
    assert got["rounds"] == old["rounds"]
    bad = dict(fresh, graph=jax.ShapeDtypeStruct((4, 5), jnp.float32))
    with pytest.raises(ConfigError, match=r"mixer state leaf \['graph'\] goes from shape"):
        demix_state.edit_mix_state(old, bad, idx, 3)
    # sampler state: streams kept by name, schedule gathered and renormalised
    sampler = {"version": 1, "config": {"domains": list("abc")}, "num_workers": 0,
               "domains": {"a": {"p": 1}, "b": None, "c": {"p": 3}},
               "composer": {"step": 5, "schedule": [[4, [0.5, 0.3, 0.2]]],
                            "last_set_step": 3, "remainder": [0.1, 0.2, 0.3]}}
    got = demix_state.edit_sampler_state(sampler, ["a", "c"], np.array([0, 2]))
    assert got["config"]["domains"] == ["a", "c"] and got["domains"] == {"a": {"p": 1},
                                                                         "c": {"p": 3}}
    np.testing.assert_allclose(got["composer"]["schedule"][0][1], [0.5 / 0.7, 0.2 / 0.7])
    assert got["composer"]["remainder"] == [0.1, 0.3] and got["composer"]["step"] == 5
    got = demix_state.edit_sampler_state(sampler, list("abcd"), np.array([0, 1, 2, 0]))
    assert got["composer"]["remainder"] == [0.1, 0.2, 0.3, 0.0] and "d" not in got["domains"]


def _fake_run(tmp_path):
    """A DEMix run dir as `mixjax train` leaves it, with a random whole train state at step
    7 (Adam moments, mixer state) and a sampler state, without training."""
    c = config_lib.Config()
    c.model.kind, c.model.d_model, c.model.num_layers, c.model.num_heads = "demix", 16, 1, 2
    c.model.hparams = {"num_experts": 3, "expert_d_ff": 8}
    c.mixing.name = "temperature"
    c.data.domains = ("a", "b", "c")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config_lib.to_json(c))
    (run / "run_info.json").write_text(json.dumps(
        {"domains": ["a", "b", "c"], "model": dataclasses.asdict(MCFG)}))
    _, abstract = demix_state.abstract_state(c, MCFG, "abc")
    state = _random(abstract, 3).replace(step=np.int32(7))
    sampler = {"version": 1, "config": {"domains": list("abc")}, "num_workers": 0,
               "domains": {"a": None, "b": None, "c": None},
               "composer": {"step": 7, "schedule": [[6, [0.2, 0.3, 0.5]]],
                            "last_set_step": 6, "remainder": [0.0, 0.0, 0.0]}}
    ck = ckpt_lib.Checkpointer(run / "checkpoints")
    ck.save(7, state, {"step": 7, "sampler": sampler}, process={"sampler": sampler})
    ck.close()
    return run, c, state


def test_out_run_writes_the_edited_state_at_the_same_step_and_bad_input_exits_2(tmp_path,
                                                                               capsys):
    run, c, old = _fake_run(tmp_path)
    new_dir = tmp_path / "new"
    rc = cli.main(["demix", str(run), "--remove", "b", "--out-run", str(new_dir)])
    assert rc == 0 and "experts in order: a, c" in capsys.readouterr().out
    cfg = config_lib.load(new_dir / "config.json")
    assert cfg.data.domains == ("a", "c") and cfg.model.hparams["num_experts"] == 2
    assert cfg.optim.schedule_steps == c.train.steps and cfg.model.init_from is None
    _, abstract = demix_state.abstract_state(cfg, dataclasses.replace(MCFG, num_experts=2), "ac")
    ck = ckpt_lib.Checkpointer(new_dir / "checkpoints")
    state, host, own = ck.restore_verified(7, abstract)       # fits a run over (a, c)
    ck.close()
    assert int(state.step) == 7 and host["sampler"]["config"]["domains"] == ["a", "c"]
    assert own["sampler"] == host["sampler"]
    w = old.params["blocks"][0]["demix"]["w_up"]
    np.testing.assert_array_equal(state.params["blocks"][0]["demix"]["w_up"], w[[0, 2]])
    np.testing.assert_array_equal(_adam(state.opt_state).nu["blocks"][0]["demix"]["w_up"],
                                  _adam(old.opt_state).nu["blocks"][0]["demix"]["w_up"][[0, 2]])
    np.testing.assert_array_equal(state.rng, old.rng)
    np.testing.assert_array_equal(state.eval_loss, old.eval_loss[[0, 2]])
    assert json.loads((new_dir / "demix_edit.json").read_text())["index"] == [0, 2]
    # bad input: one line naming the culprit, exit 2, nothing written
    for argv, msg in ((["--remove", "b", "--out-run", str(new_dir)], "already exists"),
                      (["--add", "d", "--from", "z", "--out-run", str(tmp_path / "x")],
                       "--from 'z': not a domain"),
                      (["--add", "d", "--from", "a", "--out-run", str(tmp_path / "x"),
                        "--set", "mixing.hparams={'tau': 'x'}"], "mixing.hparams")):
        rc = cli.main(["demix", str(run), *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "x" / "checkpoints").exists()
    # resuming with another expert count than the edited run's: one line naming the key
    rc = cli.main(["train", str(new_dir / "config.json"), "--resume",
                   "--set", "model.hparams={'num_experts': 3, 'expert_d_ff': 8}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.hparams" in err, err


@pytest.mark.slow
def test_train_edit_and_resume_for_real(tmp_path, capsys):
    """Trains a 2-domain DEMix run 2 steps, adds an expert for a third domain copied from
    the first (its Adam moments too), resumes to step 3; a DEMix file loaded with another
    domain order is one line naming model.init_from. ~10 s on 2 shared cores."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in "abc":
        (corpus / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": f"{name} doc {i} " + name * (i % 7 + 3)}) + "\n"
            for i in range(60)))
    path = tmp_path / "c.py"
    path.write_text(
        "from mixjax.config import Config\n\ndef get_config():\n    cfg = Config()\n"
        f"    cfg.data.corpus = {str(corpus)!r}\n    cfg.data.domains = ('a', 'b')\n"
        "    cfg.model.kind = 'demix'\n"
        "    cfg.model.hparams = {'num_experts': 2, 'expert_d_ff': 8}\n"
        "    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 16, 1, 2\n"
        "    cfg.data.seq_len, cfg.data.batch_size = 16, 4\n"
        "    cfg.train.steps, cfg.train.ckpt_every, cfg.train.eval_every = 2, 2, 0\n"
        "    cfg.eval.num_seqs, cfg.eval.batch_size = 4, 4\n"
        "    cfg.mixing.name = 'temperature'\n    cfg.train.progress = False\n"
        "    return cfg\n")
    run, new = tmp_path / "run", tmp_path / "new"
    assert cli.main(["train", str(path), "--set", f"train.run_dir={run}"]) == 0
    assert cli.main(["demix", str(run), "--add", "c", "--from", "a", "--out-run", str(new)]) == 0
    assert cli.main(["train", str(new / "config.json"), "--resume",
                     "--set", "train.steps=3"]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    info = json.loads((run / "run_info.json").read_text())
    old_cfg = config_lib.load_run_config(run)
    _, old_abs = demix_state.abstract_state(old_cfg, demix.DEMixConfig(**info["model"]), "ab")
    new_cfg = config_lib.load(new / "config.json")
    _, new_abs = demix_state.abstract_state(
        new_cfg, demix.DEMixConfig(**{**info["model"], "num_experts": 3}), "abc")
    for d, abstract, step in ((run, old_abs, 2), (new, new_abs, 2), (new, new_abs, 3)):
        ck = ckpt_lib.Checkpointer(d / "checkpoints")
        got = ck.restore_verified(step, abstract)[0]
        ck.close()
        if d == run:
            old = got
        elif step == 2:
            mu_old = _adam(old.opt_state).mu["blocks"][0]["demix"]["w_gate"]
            mu_new = _adam(got.opt_state).mu["blocks"][0]["demix"]["w_gate"]
            np.testing.assert_array_equal(mu_new, np.asarray(mu_old)[[0, 1, 0]])
            assert np.abs(np.asarray(mu_old)).sum() > 0
        else:
            assert int(got.step) == 3
    assert cli.main(["export", str(run), "--format", "safetensors"]) == 0
    capsys.readouterr()
    rc = cli.main(["train", str(path), "--set", f"train.run_dir={tmp_path / 'r2'}",
                   "--set", "data.domains=('b', 'a')",
                   "--set", f"model.init_from={run / 'model.safetensors'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.init_from" in err, err
