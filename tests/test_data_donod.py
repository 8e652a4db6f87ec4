"""DONOD (mixjax.data.donod, ``mixjax data select --method donod``): TOPSIS against a hand
computation, DON/NOD of the vmapped one-step updates against a plain-numpy restatement over
direct per-example gradients, the command end to end on a checkpointed tiny model (file,
cache), and its bad input (one line, exit 2, nothing written)."""

import json
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from grad_fakes import PAD, S, V, init_params, token_loss_fn  # noqa: E402

from mixjax.data import donod, selection  # noqa: E402
from mixjax.data.sources import DataError  # noqa: E402


def test_topsis_matches_a_hand_computation():
    x = np.array([[3.0, 4.0], [0.0, 3.0], [4.0, 0.0]])     # DON (benefit), NOD (cost)
    # column norms: sqrt(9+0+16) = 5, sqrt(16+9+0) = 5; weights (0.6, 0.4)
    v = np.array([[0.6 * 3 / 5, 0.4 * 4 / 5], [0.0, 0.4 * 3 / 5], [0.6 * 4 / 5, 0.0]])
    ideal, anti = np.array([0.48, 0.0]), np.array([0.0, 0.32])
    dp = np.array([math.hypot(v[i, 0] - ideal[0], v[i, 1] - ideal[1]) for i in range(3)])
    dm = np.array([math.hypot(v[i, 0] - anti[0], v[i, 1] - anti[1]) for i in range(3)])
    want = dm / (dp + dm)
    # by hand: row 2 is the ideal itself (closeness 1); row 1: d+ = hypot(.48, .24),
    # d- = hypot(0, .08)
    assert want[2] == 1.0
    assert want[1] == pytest.approx(0.08 / (math.hypot(0.48, 0.24) + 0.08))
    got = donod.topsis(x, (True, False), (3.0, 2.0))          # weights are normalised
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(donod.keep_top(got, 0.5), [0, 2])     # ceil(1.5) = 2
    np.testing.assert_array_equal(donod.topsis(np.ones((4, 2)), (True, False)), 0.5)
    # equal weights by default; a cost criterion flips the preference
    np.testing.assert_allclose(donod.topsis(x, (True, True)), donod.topsis(x, (True, True),
                                                                           (1, 1)))
    with pytest.raises(DataError, match="TOPSIS weights"):
        donod.topsis(x, (True, False), (0.0, 0.0))


def test_keep_top_ties_take_the_lower_index():
    np.testing.assert_array_equal(donod.keep_top(np.array([0.2, 0.5, 0.5, 0.1]), 0.25), [1])
    np.testing.assert_array_equal(donod.keep_top(np.array([0.2, 0.5, 0.5, 0.1]), 1.0),
                                  [0, 1, 2, 3])


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, V, size=(n, S + 1)).astype(np.int32)
    rows[:, -2:] = np.where(rng.random((n, 2)) < 0.4, PAD, rows[:, -2:])
    return rows


@pytest.mark.parametrize("param_filter", [None, "head"])
def test_don_nod_match_numpy_over_direct_per_example_gradients(param_filter):
    params = init_params(jax.random.PRNGKey(0))
    rows, lr = _rows(5), 0.7
    # chunk 2: 3 chunks, the last one padded
    don, nod = donod.donod_metrics(token_loss_fn, params, rows, lr=lr, param_filter=param_filter,
                                   chunk=2)
    for i in range(len(rows)):
        def loss(p, i=i):
            tl, tm = token_loss_fn(p, {"tokens": rows[i:i + 1]})
            return (tl * tm).sum() / max(float(tm.sum()), 1.0)
        g = jax.grad(loss)(params)
        paths = jax.tree_util.tree_leaves_with_path(params)
        d_ref = n_ref = 0.0
        for (path, w), gl in zip(paths, jax.tree.leaves(g)):
            if param_filter and param_filter not in jax.tree_util.keystr(path):
                continue
            w, gl = np.asarray(w, np.float64), np.asarray(gl, np.float64)
            d_ref += np.linalg.norm(w) - np.linalg.norm(w - lr * gl)
            n_ref += np.linalg.norm(w - (w - lr * gl))
        assert don[i] == pytest.approx(d_ref, rel=1e-4, abs=1e-6)
        assert nod[i] == pytest.approx(n_ref, rel=1e-5)
    assert np.all(nod > 0) and np.ptp(don) > 1e-3         # the documents differ


def _fake_run(root: pathlib.Path) -> pathlib.Path:
    """A run dir as `mixjax train` leaves it (config + one checkpoint), without training."""
    from mixjax import config as config_lib
    from mixjax.models import registry
    from mixjax.train import checkpoint as ckpt_lib
    c = config_lib.Config()
    c.model.d_model, c.model.num_layers, c.model.num_heads = 8, 1, 2
    c.data.seq_len = 16
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(config_lib.to_json(c))
    params = registry.build(c.model, 264).init(0)
    ck = ckpt_lib.Checkpointer(run / "checkpoints")
    ck.save(1, {"params": params}, host={})
    ck.close()
    return run


def _corpus(root: pathlib.Path):
    root.mkdir()
    rng = np.random.default_rng(0)
    for dom in ("prose", "code"):
        with open(root / f"{dom}.jsonl", "w") as f:
            for i in range(6):
                f.write(json.dumps({"text": " ".join(rng.choice(["ab", "cd", "ef"], 5)) +
                                    f" {dom}{i}"}) + "\n")


def test_data_select_donod_writes_a_complete_file_from_cached_metrics(tmp_path, capsys):
    from mixjax.cli import main
    from mixjax.data.spec import resolve_sources
    run = _fake_run(tmp_path)
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    out, cache = tmp_path / "donod.jsonl", tmp_path / "cache"
    argv = ["data", "select", str(corpus), "--out", str(out), "--method", "donod", "--budget",
            "0.5", "--model", str(run), "--cache-dir", str(cache), "--arg", "seq_len=12"]
    assert main(argv) == 0
    assert "12 scored, 0 from the cache" in capsys.readouterr().out
    sel = selection.load(out)
    assert sel.complete and sorted(sel.weights.values()) == [0.0] * 6 + [1.0] * 6
    assert sel.scorer.startswith("donod(budget=0.5, model=")
    selection.check_corpus(resolve_sources(str(corpus)), sel)
    first = out.read_bytes()
    # other TOPSIS weights: the metrics come from the cache
    assert main(argv + ["--arg", "w_don=1", "--arg", "w_nod=0"]) == 0
    assert "0 scored, 12 from the cache" in capsys.readouterr().out
    with np.load(next(cache.glob("donod-*.npz"))) as z:
        by_hash = dict(zip(z["hashes"].tolist(), z["don"]))
    kept = [h for h, w in selection.load(out).weights.items() if w > 0]
    assert sorted(by_hash[h] for h in kept) == sorted(by_hash.values())[6:]   # top DON
    assert main(argv) == 0 and out.read_bytes() == first                      # deterministic


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0"], "--budget must be a fraction in (0, 1], got '0'"),
    (["--budget", "1.5"], "--budget must be a fraction in (0, 1], got '1.5'"),
    (["--budget", "0.5"], "--method donod needs --model"),
    (["--budget", "0.5", "--model", "RUN", "--arg", "lr=-1"], "--arg 'lr=-1'"),
    (["--budget", "0.5", "--model", "RUN", "--arg", "k=3"], "--arg 'k=3'"),
    (["--budget", "0.5", "--model", "MISSING"], "is not a run dir"),
])
def test_donod_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, extra, message):
    from mixjax.cli import main
    extra = [str(tmp_path) if a == "RUN" else str(tmp_path / "nope") if a == "MISSING" else a
             for a in extra]
    out = tmp_path / "sel.jsonl"
    # the corpus does not exist: the arguments are checked before it is read
    assert main(["data", "select", str(tmp_path / "no-corpus"), "--out", str(out), "--method",
                 "donod", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_donod_evidence_on_injected_noise(tmp_path):
    """docs/selection.md's DONOD rows (random-character noise, 3 seeds, a smaller pool): the
    step norm (NOD) and TOPSIS with DON as a cost drop the corrupted documents far more often
    than chance; with the paper's direction (DON a benefit) DONOD keeps them (about 4 min)."""
    import sys as _sys
    from mixjax.cli import main
    root = pathlib.Path(__file__).resolve().parents[1]
    run = tmp_path / "uniform"
    assert main(["train", str(root / "configs" / "lm_tiny_uniform.py"), "--set",
                 f"train.run_dir={run}", "--set", "train.progress=False"]) == 0
    _sys.path.insert(0, str(root / "experiments"))
    import donod_evidence as ev
    out, _ = ev.run(str(run), [0, 1, 2], kinds=("random",), pool=200)
    for name, above in (("nod", True), ("donod_don_cost", True), ("donod", False)):
        m, h = ev._t_interval(np.asarray(out["random"][name]) - 0.2)
        assert (m - h > 0) if above else (m + h < 0), (name, out["random"][name])
