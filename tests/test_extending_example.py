"""Runs the worked example of docs/extending.md (docs/extending_example.py) as written."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import mixing
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib
from train_fakes import PAD, VOCAB, fake_data, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example(file: str = "extending_example.py"):
    import sys
    name = "mixjax_docs_" + file[:-len(".py")]
    if name not in sys.modules:   # registering twice would be an error: load once
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod      # dataclasses look the module up while it executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_new_statistic_and_mixer_run_in_the_step():
    _load_example()
    mixer = mixing.get("spread", eta=2.0)
    emb = jax.random.normal(jax.random.PRNGKey(0), (VOCAB, VOCAB)) * 0.5

    def apply(p, x):
        return p["emb"][x]

    tokens = jax.random.randint(jax.random.PRNGKey(1), (6, 9), 0, PAD)
    batch = {"tokens": tokens, "domain_id": jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32),
             "sampling_weights": jnp.full((3,), 1 / 3)}
    tx = optax.sgd(0.1)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=3,
                                    pad_id=PAD, jit=False)
    state = state_lib.init_state({"emb": emb}, tx, mixer, 3, 0)
    _, m = step(state, batch)
    # by hand: per-domain variance of the token losses, then one multiplicative update
    tl, tm = step_lib.token_losses(apply, {"emb": emb}, tokens, PAD)
    tl, ids = np.asarray(tl, np.float64), np.asarray(batch["domain_id"])
    var = np.asarray([tl[ids == d].var() for d in range(3)])
    want = np.exp(2.0 * var) / np.exp(2.0 * var).sum()
    np.testing.assert_allclose(np.asarray(m["weights"]), want, rtol=1e-4)


def test_new_step_with_extra_state_trains_logs_and_resumes_exactly(tmp_path):
    _load_example()

    def cfg_for(run, steps):
        cfg = tiny_config(tmp_path / run, steps=steps, eval_every=0, ckpt_every=2)
        cfg.train.objective = "ema"
        cfg.train.objective_hparams = {"decay": 0.5}
        cfg.optim.schedule_steps = 4   # the same LR schedule for the 2-step first half
        return cfg

    full = loop.train(cfg_for("full", 4), data=fake_data(cfg_for("full", 4)))
    loop.train(cfg_for("split", 2), data=fake_data(cfg_for("split", 2)))
    split = loop.train(cfg_for("split", 4), data=fake_data(cfg_for("split", 4)), resume=True)
    assert int(full.state.step) == 4 and int(split.state.step) == 4
    assert _leaves_equal(full.state.extra["ema_params"], split.state.extra["ema_params"])
    assert _leaves_equal(full.state.params, split.state.params)
    assert not _leaves_equal(full.state.extra["ema_params"], full.state.params)
    recs = metrics_lib.read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    # logged from the step's metrics["extra"]; step 1 has LR 0 (warmup), so no gap yet
    assert recs[0]["ema_gap"] == 0 and all(r["ema_gap"] > 0 for r in recs[1:])


def test_the_new_methods_check_runs_at_config_validation(tmp_path):
    _load_example()
    from mixjax import config as config_lib
    from mixjax.train import checks
    cfg = tiny_config(tmp_path / "bad", steps=2)
    cfg.train.objective, cfg.train.objective_hparams = "ema", {"decay": 1.5}
    with pytest.raises(config_lib.ConfigError,
                       match=r"train.objective_hparams.*ema decay must be in \[0, 1\), got 1.5"):
        checks.check_names(config_lib.validate(cfg))


def test_an_aggregator_over_examples_trains(tmp_path):
    """docs/extending.md section 4: UPGrad over the batch's sequences, 3 steps."""
    _load_example("extending_example_examples.py")
    cfg = tiny_config(tmp_path / "ex", steps=3, eval_every=0, ckpt_every=0)
    cfg.mixing.name = "upgrad_examples"
    res = loop.train(cfg, data=fake_data(cfg))
    recs = metrics_lib.read_jsonl(tmp_path / "ex" / "metrics.jsonl")
    assert int(res.state.step) == 3 and [r["step"] for r in recs] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in recs)


def test_a_registered_model_kind_trains(tmp_path):
    """docs/extending.md section 5: a one-layer MLP-mixer LM as model.kind, 3 steps."""
    import json
    _load_example("extending_example_model.py")
    cfg = tiny_config(tmp_path / "mm", steps=3, eval_every=3, ckpt_every=0)
    cfg.model.kind, cfg.model.hparams = "mlp_mixer", {"max_len": 16, "d_ff": 48}
    res = loop.train(cfg, data=fake_data(cfg))
    assert set(res.state.params) == {"embed", "token_mix", "mlp_in", "mlp_out", "norm1",
                                     "norm2", "norm_out"}
    info = json.loads((tmp_path / "mm" / "run_info.json").read_text())
    assert info["model"]["max_len"] == 16 and info["num_params"] == 32 * 32 + 16 * 16 + 2 * 32 * 48 + 3 * 32
    recs = metrics_lib.read_jsonl(tmp_path / "mm" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in recs)
    assert np.isfinite(res.final_eval["loss_avg"])


def test_an_unknown_model_kind_is_a_config_error_naming_model_kind(tmp_path):
    # checked when the run is built (mixjax.train.checks), never when a config is loaded
    from mixjax import config as config_lib
    from mixjax.train import checks
    cfg = tiny_config(tmp_path / "bad", steps=2)
    cfg.model.kind = "no_such_model"
    with pytest.raises(config_lib.ConfigError, match=r"model.kind.*no_such_model.*transformer"):
        checks.check_names(config_lib.validate(cfg))


def test_the_cli_exits_2_on_an_unknown_model_kind(capsys):
    from mixjax.cli import main
    rc = main(["train", str(ROOT / "configs" / "lm_tiny_uniform.py"),
               "--set", "model.kind=no_such_model"])
    assert rc == 2 and "'model.kind'" in capsys.readouterr().err


def test_a_test_time_dg_algorithm_is_evaluated_through_its_hook(tmp_path, capsys):
    """docs/extending.md section 7: a kNN memory classifier; the evaluation calls its
    test-time procedure per environment (memory writes only in the test env)."""
    import json
    from mixjax.cli import main
    from mixjax.dg import algorithms as A
    from mixjax.dg import test_time
    _load_example("extending_example_dg.py")
    # only an algorithm that overrides predict_with_state takes the per-environment path
    assert test_time.uses_hook(A.get("knn_memory")) and not test_time.uses_hook(A.get("erm"))
    tiny = str(ROOT / "configs" / "dg_tiny.py")
    run = tmp_path / "dg"
    args = ["dg", "sweep", tiny, "--run-dir", str(run), "--set", "steps=12",
            "--set", "algorithms=['knn_memory']", "--set", "test_envs=single",
            "--set", "n_hparams=1", "--set", "n_trials=1", "--no-table"]
    assert main(args) == 0
    recs = [json.loads(line) for f in sorted(run.glob("*/results.jsonl"))
            for line in f.read_text().splitlines()]
    assert recs and all(r["test_time_s"] > 0 for r in recs)
    for r in recs:
        (test_env,) = r["args"]["test_envs"]
        envs = sorted(int(k[3:-len("_in_acc")]) for k in r if k.endswith("_in_acc"))
        for e in envs:
            assert 0.0 <= r[f"env{e}_in_acc"] <= 1.0
            # adaptation writes every example of the test env to memory, none elsewhere
            assert r[f"env{e}_tt_cost"] == (40 if e == test_env else 0)
            # the same model without its test-time step (plain predict, the linear head)
            assert 0.0 <= r[f"env{e}_in_acc_before_tt"] <= 1.0 and 0.0 <= r[f"env{e}_out_acc_before_tt"] <= 1.0


def test_a_scorer_writes_a_selection_the_sampler_applies(tmp_path):
    """docs/extending.md section 6: the quality scorer, its file, drop mode in the sampler."""
    import json
    from mixjax.data import DomainSampler, selection
    ex = _load_example("extending_example_selection.py")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [f"doc{i} " + "words and more words " * (1 + i % 5) for i in range(30)]
    bad = [f"#{i} | 12 | 34 | 56 | 78 |" for i in range(10)]
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in good + bad))
    sha = ex.write_selection(str(corpus), str(tmp_path / "q.jsonl"))
    sel = selection.load(tmp_path / "q.jsonl")
    assert sel.sha256 == sha and sel.scorer == "quality-v1"
    assert all(sel.weight(d) > 0 for d in good) and all(sel.weight(d) == 0 for d in bad)
    from mixjax.data.spec import resolve_sources
    src = selection.select(resolve_sources(str(corpus))["a"], sel, "drop", seed=0)
    sampler = DomainSampler({"a": src}, seq_len=32, batch_size=4, split=None, chunk=4)
    text = "".join(sampler.tokenizer.decode(r) for _ in range(20) for r in next(sampler)["tokens"])
    assert "doc" in text and "|" not in text
