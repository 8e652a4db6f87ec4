"""DIDS (mixjax/mixing/dids.py): the reference's round update restated in plain numpy
(``shiweijiezero/DIDS: mixture_DIDS.py:835-1088``, dict bookkeeping per domain and
eval task), the in-step exponential fit against scipy's ``curve_fit`` (what the reference
calls), and the mixer's round schedule over a few steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit

from mixjax import mixing
from mixjax.mixing import dids

HP = dict(beta=0.2, temperature=1.0, eps=0.0, horizon=5, min_fit_rounds=5,
          short_history_potential=1.0)


def np_forecast(y, horizon):
    """The grid fit restated: closed-form (a, c) per b, least squares over the grid."""
    x = np.arange(len(y), dtype=np.float64)
    best = None
    for b in dids.B_GRID.astype(np.float64):
        A = np.stack([np.exp(-b * x), np.ones_like(x)], 1)
        (a, c), *_ = np.linalg.lstsq(A, y, rcond=None)
        sse = np.sum((A @ [a, c] - y) ** 2)
        if best is None or sse < best[0]:
            best = (sse, a, b, c)
    _, a, b, c = best
    return a * np.exp(-b * (len(y) + horizon)) + c


def np_rule(alpha, kl, losses, hp):
    """``DIDS_mixture_multi_task`` of the reference, per domain i and eval task j (dicts of
    floats), with our forecast in place of curve_fit."""
    k, t = kl.shape
    sim = np.zeros((k, t))
    for j in range(t):
        diffs = kl[:, j].max() - kl[:, j]
        sim[:, j] = diffs / diffs.sum() if diffs.sum() > 0 else 0.0
    util = np.zeros((k, t))
    have = False
    for j, hist in enumerate(losses):
        if len(hist) >= 2:
            have = True
            improvement = hist[-2] - hist[-1]
            if len(hist) < hp["min_fit_rounds"]:
                future = hp["short_history_potential"]
            else:
                future = hist[-1] - np_forecast(np.asarray(hist), hp["horizon"])
            for i in range(k):
                util[i, j] = sim[i, j] * (improvement + future) / alpha[i] if alpha[i] > 0 else 0
    if have:
        u = np.array([util[i].sum() / t for i in range(k)])
        u = np.where(u < 0, 1e-7, u)
    else:
        u = sim.sum(1)
    u = u ** (1.0 / hp["temperature"])
    w = u / u.sum() if u.sum() > 0 else np.full(k, 1.0 / k)
    new = hp["beta"] * alpha + (1 - hp["beta"]) * w
    return (1 - hp["eps"]) * new + hp["eps"] / k


def run_rule(alpha, kl, losses, hp, history=8):
    hist = np.zeros((history, kl.shape[1]), np.float32)
    n = len(losses[0])
    if n:
        hist[-n:] = np.asarray(losses, np.float32).T
    out, _, _ = dids.weights_rule(jnp.asarray(alpha, jnp.float32), jnp.asarray(kl, jnp.float32),
                                  jnp.asarray(hist), jnp.float32(n), **hp)
    return np.asarray(out)


@pytest.mark.parametrize("rounds", [1, 2, 4, 7])
@pytest.mark.parametrize("extra", [{}, {"temperature": 0.5, "eps": 0.1, "beta": 0.5}])
def test_rule_matches_the_reference_restated(rounds, extra):
    rng = np.random.default_rng(rounds)
    k, t = 5, 2
    alpha = rng.dirichlet(np.ones(k))
    kl = rng.uniform(0.5, 3.0, (k, t))
    base = rng.uniform(2.0, 3.0, t)
    losses = [list(base[j] * np.exp(-0.2 * np.arange(rounds)) + 1.0
                   + 0.01 * rng.standard_normal(rounds)) for j in range(t)]
    hp = {**HP, **extra}
    np.testing.assert_allclose(run_rule(alpha, kl, losses, hp), np_rule(alpha, kl, losses, hp),
                               rtol=2e-5, atol=1e-6)


def test_rule_edge_cases_match():
    k = 4
    alpha = np.array([0.4, 0.3, 0.2, 0.1])
    # equal distances: every impact is 0 -> the uniform fallback (the reference's else branch)
    np.testing.assert_allclose(run_rule(alpha, np.ones((k, 1)), [[3.0]], HP),
                               np_rule(alpha, np.ones((k, 1)), [[3.0]], HP), atol=1e-7)
    # a rising loss: negative utilities floor at 1e-7
    kl = np.array([[1.0], [2.0], [0.5], [4.0]])
    rising = [[2.0, 2.2, 2.5, 2.9, 3.4, 4.0]]
    np.testing.assert_allclose(run_rule(alpha, kl, rising, HP), np_rule(alpha, kl, rising, HP),
                               rtol=2e-5, atol=1e-7)
    # the farthest domain gets no impact; the closest the most
    first = run_rule(np.full(k, 0.25), kl, [[3.0]], HP)
    assert np.argmax(first) == 2 and np.argmin(first) == 3


@pytest.mark.parametrize("b0", [0.05, 0.3, 0.8])
def test_grid_fit_agrees_with_curve_fit(b0):
    """The in-step fit versus the reference's scipy.optimize.curve_fit (p0, maxfev as there)."""
    x = np.arange(12.0)
    y = 1.5 * np.exp(-b0 * x) + 2.0 + 0.002 * np.sin(3 * x)

    def f(x, a, b, c):
        return a * np.exp(-b * x) + c

    popt, _ = curve_fit(f, x, y, p0=[y[0] - y[-1], 0.1, y[-1]], maxfev=2000)
    hist = np.zeros((16, 1), np.float32)
    hist[-12:, 0] = y
    got = float(dids.exp_forecast(jnp.asarray(hist), jnp.float32(12), 5)[0])
    assert abs(got - f(len(y) + 5, *popt)) < 2e-3
    assert abs(got - np_forecast(y, 5)) < 1e-4


def test_mixer_rounds_accumulate_distances_and_losses():
    """Three steps per round; domain 2 is absent from one step and from the whole of round 2."""
    k, r = 3, 3
    mixer = mixing.get("dids", update_every=r, history=5, min_fit_rounds=3)
    state = mixer.init(k)
    rng = np.random.default_rng(0)
    upd = jax.jit(mixer.update)
    alpha = np.full(k, 1.0 / k)
    window, tl, hist, last, counts = [], [], [], np.zeros((k, 1)), []
    for step in range(3 * r + 1):
        gn = rng.uniform(0.5, 2.0, k)
        gd = rng.uniform(-1.0, 1.0, k)
        tn = rng.uniform(0.5, 2.0)
        count = np.array([5.0, 5.0, 0.0 if step in (1, 3, 4, 5) else 5.0])
        loss = 3.0 - 0.1 * step
        if step % r == 0 and step > 0:      # close the round: numpy bookkeeping
            d = np.stack(window)            # [r, k]
            pres = np.stack([c > 0 for c, _ in zip(counts, window)])
            mean = np.array([d[pres[:, i], i].mean() if pres[:, i].any() else np.nan
                             for i in range(k)])
            obs = ~np.isnan(mean)
            mean = np.where(obs, mean, last[:, 0] if step > r else mean[obs].mean())
            last = mean[:, None]
            hist.append(np.mean(tl))
            alpha = np_rule(alpha, last, [hist], {**HP, "min_fit_rounds": 3})
            window, tl, counts = [], [], []
        if step % r == 0:
            counts = []
        window.append(gn ** 2 - 2 * gd + tn ** 2)
        counts.append(count)
        tl.append(loss)
        stats = {"grad_norm": jnp.asarray(gn, jnp.float32), "grad_dot": jnp.asarray(gd, jnp.float32),
                 "target_grad_norm": jnp.float32(tn), "target_loss": jnp.float32(loss),
                 "count": jnp.asarray(count, jnp.float32)}
        state = upd(state, stats, jnp.int32(step))
        np.testing.assert_allclose(np.asarray(state["weights"]), alpha, rtol=1e-5, atol=1e-7,
                                   err_msg=f"step {step}")
    assert not np.allclose(alpha, 1.0 / k)     # the weights really moved
    assert float(state["n_hist"]) == 3


def test_hparams_and_target_count_are_checked():
    with pytest.raises(ValueError, match="beta"):
        mixing.get("dids", beta=1.0)
    with pytest.raises(ValueError, match="min_fit_rounds"):
        mixing.get("dids", min_fit_rounds=2)
    with pytest.raises(ValueError, match="history"):
        mixing.get("dids", history=4)
    with pytest.raises(TypeError, match="no hyperparameter"):
        mixing.get("dids", window=3)
    # the trainer's target count fills num_targets (mixing.build), unless it was given
    assert mixing.build("dids", {}, domains=("a", "b"), num_targets=3).num_targets == 3
    assert mixing.build("uniform", {}, domains=("a", "b"), num_targets=3).name == "uniform"
    with pytest.raises(ValueError, match="num_targets=2, but grads.target names 1"):
        mixing.build("dids", {"num_targets": 2}, domains=("a", "b"), num_targets=1)
    mixer = mixing.get("dids", num_targets=2)
    stats = {"grad_norm": jnp.ones(3), "grad_dot": jnp.ones(3), "target_grad_norm": jnp.float32(1),
             "target_loss": jnp.float32(2), "count": jnp.ones(3)}
    with pytest.raises(ValueError, match="num_targets"):
        mixer.update(mixer.init(3), stats, jnp.int32(1))


@pytest.mark.parametrize("num_targets", [1, 2])
def test_engine_target_loss_is_the_target_batch_mean_loss(num_targets):
    """``target_loss`` (the value of the target gradient's value_and_grad) against a direct
    masked mean of the tiny LM's token losses; one value per target domain."""
    from grad_fakes import init_params, make_batch, token_loss_fn
    from mixjax.mixing import grads

    k = 3
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), k, per_domain=2)
    targets = [make_batch(jax.random.PRNGKey(7 + i), 1, per_domain=3)["tokens"]
               for i in range(num_targets)]
    batch = {**batch, "target_tokens": targets[0] if num_targets == 1 else jnp.stack(targets)}
    engine = grads.make_grad_stats(grads.GradConfig(strategy="vmap", layout="rows"), k)
    needs = set(mixing.mixer_class("dids").requires)
    stats = jax.jit(lambda p, b: dict(engine(token_loss_fn, p, b, needs)))(params, batch)
    want = []
    for tok in targets:
        tl, tm = token_loss_fn(params, {"tokens": tok})
        want.append(float(np.sum(np.asarray(tl) * np.asarray(tm)) / np.sum(np.asarray(tm))))
    np.testing.assert_allclose(np.reshape(np.asarray(stats["target_loss"]), -1), want, rtol=1e-5)
    assert np.asarray(stats["grad_dot"]).shape == ((k,) if num_targets == 1 else (k, num_targets))
    assert len(set(np.round(want, 6))) == num_targets     # the targets really differ


def test_an_explicit_target_count_mismatch_is_a_config_error(tmp_path, capsys):
    import pathlib

    from mixjax import cli
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm_tiny_dids.py"
    argv = ["train", str(config), "--set", f"train.run_dir={tmp_path / 'bad'}"]
    for s in ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "data.seq_len=16",
              "eval.num_seqs=2", "train.progress=False", "data.batch_size=8", "train.steps=2",
              "grads.target=[code, math]", "data.domains=[legal, news, science]",
              "mixing.hparams.num_targets=1"]:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "mixing.hparams" in err and "num_targets=1" in err and "2 domain(s)" in err
    assert not (tmp_path / "bad" / "checkpoints").exists()
