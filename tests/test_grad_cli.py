"""The gradient-based methods from the command line (`mixjax train CONFIG`), on mixpile-tiny.

Each run is the shipped config shrunk to a tiny model and 2-3 steps: bilevel
(ScaleBiO) with both model copies checkpointed and resumed, Fish over the text
domains, R&B, and DoGE with a held-out (out-of-domain) target domain.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from mixjax import cli
from mixjax.train import checkpoint as ckpt_lib
from mixjax.train import loop
from mixjax.train import metrics as metrics_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "data.seq_len=16",
        "eval.num_seqs=2", "eval.batch_size=8", "train.progress=False", "train.eval_every=0",
        "train.ckpt_every=0", "optim.warmup_steps=0",
        "optim.decay=constant"]   # a stopped run and a longer one share the schedule
HELD_OUT = ["legal", "math", "news", "science"]          # training domains; code is held out


def _train(config: str, run_dir: pathlib.Path, *sets: str, resume: bool = False) -> int:
    argv = ["train", str(CONFIGS / config), "--set", f"train.run_dir={run_dir}"]
    for s in TINY + list(sets):
        argv += ["--set", s]
    return cli.main(argv + (["--resume"] if resume else []))


def _restore(run_dir: pathlib.Path, trainer=None):
    """The latest checkpointed train state, restored onto the shapes a Trainer builds."""
    trainer = trainer or loop.Trainer(loop.load_run_config(run_dir))
    ck = ckpt_lib.Checkpointer(run_dir / "checkpoints")
    state, host = ck.restore(ck.latest_step(),
                             jax.tree.map(ckpt_lib._abstract, trainer.initial_state))
    ck.close()
    return trainer, state, host


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_bilevel_from_cli_resumes_both_models_and_weights_exactly(tmp_path):
    assert _train("lm_tiny_bilevel.py", tmp_path / "full", "train.steps=3") == 0
    assert _train("lm_tiny_bilevel.py", tmp_path / "split", "train.steps=2") == 0
    assert _train("lm_tiny_bilevel.py", tmp_path / "split", "train.steps=3", resume=True) == 0
    trainer, full, _ = _restore(tmp_path / "full")
    _, split, _ = _restore(tmp_path / "split", trainer)
    full, split = full.to_tree(), split.to_tree()   # the checkpoint layout: extra's keys flat
    assert int(full["step"]) == 3
    for key in ("params", "lower_params", "opt_state", "lower_opt_state", "mix_state"):
        assert _leaves_equal(full[key], split[key]), key
    # Two distinct copies: u (lower) and w (upper) saw different gradients.
    assert not _leaves_equal(full["params"], full["lower_params"])
    lam = np.asarray(full["mix_state"]["weights"])
    assert np.allclose(lam, np.exp(full["mix_state"]["logits"])
                       / np.exp(full["mix_state"]["logits"]).sum(), atol=1e-6)
    assert not np.allclose(lam, 1 / len(lam))                 # p moved
    # Logged: the weights and the bilevel terms; the final evaluation is of w (params).
    recs = metrics_lib.read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    last = recs[-1]
    assert {"val_loss", "L2_w", "L2_u", "L2_gap"} <= set(last)
    assert np.allclose([last[f"weight/{d}"] for d in trainer.domains], lam, atol=1e-6)
    evals = metrics_lib.read_jsonl(tmp_path / "full" / "eval.jsonl")
    ev = trainer.evaluate(full["params"])
    assert evals[-1]["step"] == 3
    assert evals[-1]["loss/code"] == pytest.approx(ev["loss/code"], rel=1e-6)
    ev_u = trainer.evaluate(full["lower_params"])
    assert evals[-1]["loss_avg"] != pytest.approx(ev_u["loss_avg"], rel=1e-6)
    # The validation batch is code's validation split; the evaluation is on test.
    assert trainer.cfg.eval.split == "test"
    from mixjax import data as data_lib
    val = data_lib.eval_arrays(data_lib.corpus_sources("mixpile-tiny"), seq_len=16,
                               split="validation", num_sequences=2)
    assert np.array_equal(trainer.target_tokens, val["code"][:2])


def test_fish_from_cli_over_text_domains(tmp_path):
    assert _train("lm_tiny_fish.py", tmp_path / "fish", "train.steps=2") == 0
    trainer, state, _ = _restore(tmp_path / "fish")
    k = len(trainer.domains)
    assert k == 8 and int(state.step) == 2
    # AdamW inner state carried: K inner updates per meta step.
    counts = [int(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0]
    assert counts and all(c == 2 * k for c in counts), counts
    recs = metrics_lib.read_jsonl(tmp_path / "fish" / "metrics.jsonl")
    for r in recs:
        assert all(r[f"count/{d}"] > 0 for d in trainer.domains)        # every domain, every step
        assert all(r[f"weight/{d}"] == pytest.approx(1 / k) for d in trainer.domains)
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0
    # The meta step moved the model away from its initialisation.
    assert not _leaves_equal(state.params, trainer.initial_state.params)


def test_fish_needs_the_per_domain_sampler(tmp_path, capsys):
    assert _train("lm_tiny_fish.py", tmp_path / "f", "data.sampler=multinomial") == 2
    assert "data.sampler" in capsys.readouterr().err


def test_rnb_from_cli(tmp_path):
    assert _train("lm_tiny_rnb.py", tmp_path / "rnb", "train.steps=2") == 0
    rows = [json.loads(x) for x in (tmp_path / "rnb" / "weights.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 2
    w = np.array(list(rows[-1]["weights"].values()))
    assert w.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(w, 1 / len(w))                       # the Gram rule moved them
    recs = metrics_lib.read_jsonl(tmp_path / "rnb" / "metrics.jsonl")
    # sampling follows the weights one step late (data.lag = 1)
    w1 = np.array(list(rows[1]["weights"].values()))
    assert np.allclose([recs[1][f"sampling_weight/{d}"] for d in rows[1]["weights"]],
                       w1 / w1.sum(), atol=1e-6)


def test_doge_with_held_out_target_domain(tmp_path):
    sets = ["train.steps=2", "mixing.hparams.target=ood", "grads.target=code",
            f"data.domains={HELD_OUT}", "data.batch_size=8"]
    assert _train("lm_tiny_doge.py", tmp_path / "ood", *sets) == 0
    info = json.loads((tmp_path / "ood" / "run_info.json").read_text())
    assert info["domains"] == HELD_OUT and info["heldout_domains"] == ["code"]
    trainer, state, _ = _restore(tmp_path / "ood")
    assert np.asarray(state.mix_state["weights"]).shape == (len(HELD_OUT),)   # K = 4
    recs = metrics_lib.read_jsonl(tmp_path / "ood" / "metrics.jsonl")
    assert "weight/code" not in recs[-1] and "count/code" not in recs[-1]
    assert all(recs[-1][f"count/{d}"] > 0 for d in HELD_OUT)
    # The target batch is code's validation split; code is evaluated, not averaged in.
    from mixjax import data as data_lib
    val = data_lib.eval_arrays(data_lib.corpus_sources("mixpile-tiny"), seq_len=16,
                               split="validation", num_sequences=2)
    assert np.array_equal(trainer.target_tokens, val["code"][:2])
    ev = metrics_lib.read_jsonl(tmp_path / "ood" / "eval.jsonl")[-1]
    assert "loss/code" in ev
    assert ev["loss_avg"] == pytest.approx(np.mean([ev[f"loss/{d}"] for d in HELD_OUT]))


def test_unknown_target_domain_is_a_config_error(tmp_path, capsys):
    assert _train("lm_tiny_doge.py", tmp_path / "bad", "mixing.hparams.target=ood",
                  "grads.target=kode") == 2
    err = capsys.readouterr().err
    assert "grads.target" in err and "'kode'" in err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_dga_config_holds_code_out_and_moves_weights(tmp_path):
    assert _train("lm_tiny_dga.py", tmp_path / "dga", "train.steps=2",
                  "mixing.hparams.start_step=0") == 0
    info = json.loads((tmp_path / "dga" / "run_info.json").read_text())
    assert "code" not in info["domains"] and info["heldout_domains"] == ["code"]
    rows = [json.loads(x) for x in (tmp_path / "dga" / "weights.jsonl").read_text().splitlines()]
    w = np.array(list(rows[-1]["weights"].values()))
    assert len(w) == 7 and w.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(w, 1 / 7)
    assert "loss/code" in metrics_lib.read_jsonl(tmp_path / "dga" / "eval.jsonl")[-1]


@pytest.mark.parametrize("sets, key", [
    (["train.objective=nope"], "train.objective"),
    (["train.objective_hparams.alpha=1.0"], "train.objective_hparams"),
    (["train.objective_hparams.penalty=-1.0"], "train.objective_hparams"),
    (["mixing.name=doge"], "mixing.name"),
    (["train.grad_accum=2"], "train.grad_accum"),
])
def test_objective_config_errors_name_the_key(tmp_path, capsys, sets, key):
    assert _train("lm_tiny_bilevel.py", tmp_path / "bad", *sets) == 2
    assert f"'{key}'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
