"""Skill-it against a numpy statement of HazyResearch/aioli trainer/skillit_trainer.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing.skillit import graph_from_runs


def _reference(graph, eta, update_steps, ckpt_steps, window, losses_at, total):
    """Weights in use at each batch counter 0..total-1 (the reference's loop)."""
    graph = graph.astype(float).copy()
    off = ~np.eye(len(graph), dtype=bool)
    graph[off & (graph == 1)] = 0.5
    ones = np.ones(len(graph))
    weights = ones * np.exp(eta * graph.dot(ones))
    all_losses, used, counter = [], [], 0
    while counter < total:
        for _ in range(update_steps):
            used.append(weights / weights.sum())
            if counter % ckpt_steps == 0:
                all_losses.append(losses_at(counter + 1))   # evaluated after this step
            counter += 1
            if counter == total:
                break
        if counter == total:
            break
        idx = len(all_losses)
        loss_arr = np.array(all_losses[max(0, idx - window): idx]).sum(axis=0)
        weights = ones * np.exp(eta * graph.dot(loss_arr))
    return np.stack(used)


def test_skillit_matches_reference_loop():
    k, eta, u, e, window, total = 3, 0.2, 6, 4, 2, 20
    graph = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.2], [0.3, 0.0, 1.0]])
    losses_at = lambda done: np.array([3.0, 2.0, 1.0]) + np.sin(done * np.arange(1, 4))  # noqa
    want = _reference(graph, eta, u, e, window, losses_at, total)
    m = mixing.get("skillit", eta=eta, update_steps=u, eval_every=e, window=window,
                   graph=graph.tolist())
    state = m.init(k)
    np.testing.assert_allclose(state["weights"], want[0], rtol=1e-6)
    update = jax.jit(m.update)
    got = [np.asarray(state["weights"])]
    eval_loss = np.zeros(k, np.float32)
    for s in range(1, total):
        if m.wants_eval(s):
            eval_loss = losses_at(s).astype(np.float32)
        state = update(state, {"eval_loss": jnp.asarray(eval_loss)}, jnp.int32(s))
        got.append(np.asarray(state["weights"]))
    # weights after the update inside step s serve batch s + 1; the reference switches at
    # batch s (one batch earlier, see the module docstring)
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-5)
    assert not np.allclose(want[u], want[0])                 # the rounds did move the mixture


def test_skillit_graph_checks_and_runs(tmp_path):
    with pytest.raises(ValueError, match=r"must be 3 x 3 .* shape \(2, 2\)"):
        mixing.build("skillit", {"graph": [[1, 0], [0, 1]]}, domains=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"graph\[0\]\[1\] = -0.5 is negative"):
        mixing.build("skillit", {"graph": [[1, -0.5], [0, 1]]}, domains=("a", "b"))
    ok = mixing.build("skillit", {"graph": [[1, -0.5], [0, 1]], "clip_negative": True},
                      domains=("a", "b"))
    np.testing.assert_array_equal(ok.graph_matrix(2), [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="window"):
        mixing.get("skillit", window=-1)
    runs = []
    for i, (first, last) in enumerate([((4.0, 4.0), (2.0, 3.0)), ((4.0, 4.0), (4.0, 0.0))]):
        d = tmp_path / f"one_hot_{i}"
        d.mkdir()
        rows = [{"step": 0, "loss/a": first[0], "loss/b": first[1]},
                {"step": 9, "loss/a": last[0], "loss/b": last[1]}]
        (d / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        runs.append(str(d))
    a = graph_from_runs(runs, ("a", "b"))
    np.testing.assert_allclose(a, [[0.5, 0.25], [0.0, 1.0]])
    m = mixing.build("skillit", {"graph": "runs", "graph_runs": runs}, domains=("a", "b"))
    np.testing.assert_allclose(m.graph_matrix(2), a)
    cli = mixing.build("skillit", {"graph": "runs", "graph_runs": "[" + ",".join(runs) + "]"},
                       domains=("a", "b"))                   # the --set list form
    np.testing.assert_allclose(cli.graph_matrix(2), a)
    np.save(tmp_path / "g.npy", np.eye(2) * 2)
    f = mixing.build("skillit", {"graph": str(tmp_path / "g.npy")}, domains=("a", "b"))
    np.testing.assert_allclose(f.graph_matrix(2), np.eye(2) * 2)


def test_loop_evaluates_when_the_mixer_asks(tmp_path):
    """Skill-it's evaluations come from the loop's on-demand hook (train.eval_every = 0)."""
    import sys
    import pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from train_fakes import fake_data, tiny_config
    from mixjax.train import loop
    from mixjax.train import metrics as metrics_lib
    cfg = tiny_config(tmp_path / "s", steps=7, eval_every=0, ckpt_every=0)
    cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads = 1, 16, 2
    cfg.mixing.name = "skillit"
    cfg.mixing.hparams = {"update_steps": 3, "eval_every": 2, "eta": 1.0}
    loop.train(cfg, data=fake_data(cfg))
    evals = metrics_lib.read_jsonl(tmp_path / "s" / "eval.jsonl")
    assert [r["step"] for r in evals] == [0, 1, 3, 5, 7]     # step 0: the mixer reads eval_loss
    rows = metrics_lib.read_jsonl(tmp_path / "s" / "weights.jsonl")
    # new mixtures after the updates inside steps 3 and 6 (serving batches 4 and 7)
    assert [r["step"] for r in rows] == [0, 4, 7]
    m = mixing.build("skillit", cfg.mixing.hparams, domains=("a", "b", "c"))
    # round 1 uses the evaluations after steps 1 and 3 (window 3), graph = identity
    total = np.array([evals[1][f"loss/{d}"] + evals[2][f"loss/{d}"] for d in "abc"])
    np.testing.assert_allclose(list(rows[1]["weights"].values()),
                               np.exp(total) / np.exp(total).sum(), rtol=1e-5)
    assert m.wants_eval(5) and not m.wants_eval(4)
