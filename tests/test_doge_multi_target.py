"""DoGE with several out-of-domain target domains (``grads.target`` a list).

The reference (``Olivia-fsm/DoGE: src/trainer.py``, ``update_domain_weights_distributed``)
back-propagates each domain's loss separately, clips each gradient with
``clip_grad_norm_(max_grad_norm)`` -- the target domains' too -- and scores training
domain i by ``(train_mat @ tgt_mat.T).sum(-1)``: the sum over targets of the inner
products of separately clipped gradients. Below: that rule in numpy, the engine's
[K, T] statistics against direct per-target gradients, and a tiny run from the CLI.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import cli
from mixjax.mixing import grads
from mixjax.mixing.base import init_state
from mixjax.mixing.doge import DoGE
from mixjax.train import metrics as metrics_lib

from grad_fakes import init_params, make_batch, token_loss_fn  # noqa: E402


def reference_doge_ood(train_mat, tgt_mat, dw_prev, lr, mu, max_norm, dw_min, dw_max, eps):
    """numpy statement of the reference's out-of-domain update (rows = flat gradients)."""
    def clip(rows):
        n = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows * np.minimum(1.0, max_norm / (n + 1e-6))   # torch clip_grad_norm_
    train_mat, tgt_mat = clip(train_mat), clip(tgt_mat)
    scores = lr * (train_mat @ tgt_mat.T).sum(axis=-1)
    scores = scores / (np.linalg.norm(train_mat, axis=-1).mean() + 1e-6)
    scores = np.clip(scores, lr * dw_min, lr * dw_max)
    logw = np.log(dw_prev) + scores / mu
    w = np.exp(logw - logw.max())
    w = w / w.sum()
    return (1 - eps) * w + eps / len(w)


def _stats(g, gt, lr):
    return {"grad_dot": jnp.asarray(g @ gt.T, jnp.float32),
            "grad_norm": jnp.asarray(np.linalg.norm(g, axis=1), jnp.float32),
            "target_grad_norm": jnp.asarray(np.linalg.norm(gt, axis=1), jnp.float32),
            "count": jnp.ones(g.shape[0]), "lr": jnp.asarray(lr, jnp.float32)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_doge_sums_separately_clipped_target_gradients_like_the_reference(seed):
    rng = np.random.default_rng(seed)
    k, t, p = 5, 3, 40
    g = rng.normal(size=(k, p)) * rng.uniform(0.5, 3.0, size=(k, 1))
    # target norms straddle the clip threshold: 1 is clipped hard, one not at all
    gt = rng.normal(size=(t, p)) * np.array([[0.05], [0.6], [4.0]])
    prev = rng.dirichlet(np.ones(k))
    hp = dict(mu=0.05, max_grad_norm=5.0, dw_min=-5.0, dw_max=5.0, eps=0.1)
    lr = 3e-3
    mixer = DoGE(target="ood", **hp)
    got = mixer.update(init_state(prev), _stats(g, gt, lr), 0)
    ref = reference_doge_ood(g, gt, prev, lr, hp["mu"], hp["max_grad_norm"], hp["dw_min"],
                             hp["dw_max"], hp["eps"])
    np.testing.assert_allclose(np.asarray(got["weights"]), ref, rtol=2e-5, atol=1e-7)
    # A test of the test: clipping the *sum* of the target gradients instead gives other
    # weights, so the comparison above can tell the two rules apart.
    summed = reference_doge_ood(g, gt.sum(0, keepdims=True), prev, lr, hp["mu"],
                                hp["max_grad_norm"], hp["dw_min"], hp["dw_max"], hp["eps"])
    assert np.abs(summed - ref).max() > 1e-3
    # One target as a [K, 1] column is the single-target rule.
    one = mixer.update(init_state(prev), _stats(g, gt[1:2], lr), 0)
    single = {**_stats(g, gt[1:2], lr)}
    single["grad_dot"], single["target_grad_norm"] = single["grad_dot"][:, 0], \
        single["target_grad_norm"][0]
    np.testing.assert_allclose(np.asarray(one["weights"]),
                               np.asarray(mixer.update(init_state(prev), single,
                                                       0)["weights"]), rtol=1e-6)


CONFIGS = {
    "vmap": grads.GradConfig(strategy="vmap"),
    "vmap-rows": grads.GradConfig(strategy="vmap", layout="rows"),
    "chunked2": grads.GradConfig(strategy="chunked", chunk_size=2),
    "jvp": grads.GradConfig(strategy="jvp"),
    "jvp-linearize": grads.GradConfig(strategy="jvp", jvp_mode="linearize"),
}


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_gives_one_column_per_target_domain(name):
    k, t = 4, 3
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), k, per_domain=3)
    targets = [make_batch(jax.random.PRNGKey(10 + i), 1, per_domain=4)["tokens"] for i in range(t)]
    batch = {**batch, "target_tokens": jnp.stack(targets)}          # [T, N, S+1]
    needs = ({"grad_dot", "target_grad_norm"} if name.startswith("jvp")
             else {"grad_dot", "target_grad_norm", "gram"})
    stats = jax.jit(lambda p, b: dict(grads.make_grad_stats(CONFIGS[name], k)(
        token_loss_fn, p, b, needs)))(params, batch)
    gs = np.stack([_flat(g) for g in grads.direct_domain_grads(token_loss_fn, params, batch, k)])
    gt = np.stack([_flat(grads.target_grad(token_loss_fn, params, {"tokens": tok}))
                   for tok in targets])
    assert stats["grad_dot"].shape == (k, t) and stats["target_grad_norm"].shape == (t,)
    np.testing.assert_allclose(stats["grad_dot"], gs @ gt.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["target_grad_norm"], np.linalg.norm(gt, axis=1), rtol=1e-5)
    assert np.ptp(np.linalg.norm(gt, axis=1)) > 0 and np.ptp(gs @ gt.T, axis=1).min() > 0


CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "data.seq_len=16",
        "eval.num_seqs=2", "eval.batch_size=8", "train.progress=False", "train.eval_every=0",
        "train.ckpt_every=0", "optim.warmup_steps=0", "data.batch_size=8", "train.steps=2"]
TRAIN = ["legal", "math", "news", "science"]


def _train(config, run_dir, *sets):
    argv = ["train", str(CONFIG_DIR / config), "--set", f"train.run_dir={run_dir}"]
    for s in TINY + list(sets):
        argv += ["--set", s]
    return cli.main(argv)


def test_doge_trains_with_two_held_out_target_domains(tmp_path):
    from mixjax.train import loop
    sets = ["mixing.hparams.target=ood", "grads.target=[code, tech_docs]", f"data.domains={TRAIN}"]
    assert _train("lm_tiny_doge.py", tmp_path / "run", *sets) == 0
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["domains"] == TRAIN and sorted(info["heldout_domains"]) == ["code", "tech_docs"]
    trainer = loop.Trainer(loop.load_run_config(tmp_path / "run"))
    assert trainer.target_tokens.shape == (2, 2, 17)         # [T, N, S+1]
    assert not np.array_equal(trainer.target_tokens[0], trainer.target_tokens[1])
    w = np.array(list(json.loads((tmp_path / "run" / "weights.jsonl").read_text()
                                 .splitlines()[-1])["weights"].values()))
    assert len(w) == 4 and w.sum() == pytest.approx(1.0, abs=1e-5) and not np.allclose(w, 0.25)
    ev = metrics_lib.read_jsonl(tmp_path / "run" / "eval.jsonl")[-1]
    assert "loss/code" in ev and "loss/tech_docs" in ev


def test_a_single_target_mixer_refuses_a_list(tmp_path, capsys):
    assert _train("lm_tiny_dga.py", tmp_path / "bad", "grads.target=[code, tech_docs]") == 2
    err = capsys.readouterr().err
    assert "grads.target" in err and "dga" in err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_repeated_target_domains_are_a_config_error(tmp_path, capsys):
    assert _train("lm_tiny_doge.py", tmp_path / "bad", "mixing.hparams.target=ood",
                  "grads.target=[code, code]") == 2
    err = capsys.readouterr().err
    assert "grads.target" in err and "repeats" in err
    assert not (tmp_path / "bad").exists()
