"""CIL (mixjax.dg.algorithms.cil) against its min-max restated in numpy: the classifier CE plus
lambda x (feature-only regressor's squared error - label-conditioned regressor's squared error)
of the continuous environment index, each player's update direction, and the refusal of a
dataset without environment metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.config import ConfigError
from mixjax.dg import test_time
from mixjax.dg.algorithms.cil import regression_losses
from mixjax.dg.env_dataset import EnvDataset

from dg_fakes import build_tiny, tiny_batches


def np_parts(alg, state, xs, ys, meta):
    z = np.asarray(jax.jit(alg.features)(state["params"], xs.reshape(8, 5)), np.float64)
    y = np.asarray(ys).reshape(8)
    m = np.asarray(meta, np.float64)[:, 0]
    s = m.max() - m.min()
    t = np.repeat((m - m.mean()) / (s if s > 0 else 1.0), 4)               # env e's index, per row
    return z, y, t


def np_losses(state, z, y, t):
    h = {k: np.asarray(v, np.float64) for k, v in state["reg"]["h"].items()}
    g = {k: np.asarray(v, np.float64) for k, v in state["reg"]["g"].items()}
    pred_h = z @ h["kernel"][:, 0] + h["bias"][0]
    pred_g = np.asarray([z[i] @ g["kernel"][y[i], :, 0] + g["bias"][y[i], 0] for i in range(len(y))])
    return ((pred_h - t) ** 2).mean(), ((pred_g - t) ** 2).mean()


@pytest.fixture(scope="module")
def cil():
    alg, hp = build_tiny("cil", cil_lambda=0.6)
    meta = jnp.asarray([[10.0], [40.0]], jnp.float32)
    hp = {**hp, "train_env_meta": meta}
    state = alg.init(jax.random.key(0), hp)
    xs, ys = tiny_batches(0)
    return alg, hp, state, xs, ys


def test_loss_is_ce_plus_lambda_times_the_gap_of_the_two_index_regressors(cil):
    alg, hp, state, xs, ys = cil
    assert alg.needs_train_env_metadata
    reg = state["reg"]
    loss, m = jax.jit(alg.objective)(state["params"], reg["h"], reg["g"], hp, xs, ys)
    z, y, t = np_parts(alg, state, xs, ys, hp["train_env_meta"])
    np.testing.assert_allclose(t, [-0.5] * 4 + [0.5] * 4)
    l_h, l_g = np_losses(state, z, y, t)
    logits = np.asarray(jax.jit(alg.classify)(state["params"], jnp.asarray(z, jnp.float32)), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(8), y].mean()
    np.testing.assert_allclose(float(m["reg_h_loss"]), l_h, rtol=1e-5)
    np.testing.assert_allclose(float(m["reg_g_loss"]), l_g, rtol=1e-5)
    np.testing.assert_allclose(float(m["ce_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce + 0.6 * (l_h - l_g), rtol=1e-5)


def test_each_player_moves_against_its_own_loss(cil):
    """One step: g lowers its own error on the same batch (it only fits t); h and the features
    descend CE + lambda (L_h - L_g), so the features' gradient carries -lambda dL_g/dz."""
    alg, hp, state, xs, ys = cil
    new, metrics = jax.jit(alg.update)(hp, jax.tree.map(jnp.copy, state), xs, ys, jax.random.key(1))
    assert int(new["step"]) == 1 and np.isfinite(float(metrics["loss"]))
    z, y, t = np_parts(alg, state, xs, ys, hp["train_env_meta"])
    _, g_before = np_losses(state, z, y, t)
    _, g_after = np_losses({"reg": {"h": state["reg"]["h"], "g": new["reg"]["g"]}}, z, y, t)
    assert g_after < g_before
    h_before, _ = np_losses(state, z, y, t)
    h_after, _ = np_losses({"reg": {"h": new["reg"]["h"], "g": state["reg"]["g"]}}, z, y, t)
    assert h_after < h_before
    # the features see the penalty L_h - L_g (g's error with a plus sign in the minimisation
    # is what the adversary fights): its gradient in z against numpy finite differences
    reg = state["reg"]

    def pen(zz):
        l_h, l_g = np_losses(state, zz, y, t)
        return l_h - l_g

    grad_z = jax.grad(lambda zz: (lambda a: a[0] - a[1])(regression_losses(
        zz, jnp.asarray(y), jnp.asarray(t, jnp.float32)[:, None], reg["h"], reg["g"])))(jnp.asarray(z, jnp.float32))
    eps = 1e-4
    dz = np.zeros_like(z)
    dz[3, 1] = eps
    np.testing.assert_allclose(float(grad_z[3, 1]), (pen(z + dz) - pen(z - dz)) / (2 * eps), rtol=1e-3, atol=1e-6)


def test_cil_on_a_dataset_without_metadata_is_refused():
    """One ConfigError line naming cil, the missing metadata and the dataset (the sweep prints it
    and exits 2 before anything is built, as for d3g)."""
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ConfigError) as err:
        test_time.check_requirements(["erm", "cil"], EnvDataset("plain", ("a", "b"), ((x, y), (x, y)), 2))
    msg = str(err.value)
    assert "\n" not in msg and "'cil'" in msg and "metadata" in msg and "'plain'" in msg
    with_meta = EnvDataset("m", ("a", "b"), ((x, y), (x, y)), 2, env_metadata=({"angle": 0.0}, {"angle": 15.0}))
    test_time.check_requirements(["cil"], with_meta)
