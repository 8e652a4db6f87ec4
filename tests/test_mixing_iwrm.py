"""IWRM (mixjax.mixing.iwrm): UPGrad over the per-sequence Jacobian, against a numpy/scipy
restatement of the box QPs, and against the domain-level ``upgrad`` mixer on one sequence per
domain; one real step moves the parameters by -sum_b c_b g_b."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import lsq_linear

from mixjax import mixing
from mixjax.mixing import example_grads, grads
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib

from grad_fakes import init_params, make_batch, token_loss_fn  # noqa: E402


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


def numpy_upgrad(jac, pref, norm_eps=1e-4, reg_eps=1e-4):
    """sum_i argmin_v ||A^T v||^2 s.t. v >= pref_i e_i, A A^T = G/tr(G) + reg I (BVLS)."""
    k = jac.shape[0]
    tr = np.trace(jac @ jac.T)
    a = np.zeros_like(jac) if tr < norm_eps else jac / np.sqrt(tr)
    a = np.concatenate([a, np.sqrt(reg_eps) * np.eye(k)], axis=1)
    out = np.zeros(k)
    for i in range(k):
        if pref[i] == 0:
            continue
        lower = np.zeros(k)
        lower[i] = pref[i]
        out += lsq_linear(a.T, np.zeros(a.shape[1]), bounds=(lower, np.inf), method="bvls",
                          tol=1e-14).x
    return out


def _apply(p, x):
    """grad_fakes' model as apply(params, inputs) -> logits."""
    e = p["embed"][x]
    prefix = jnp.cumsum(e, axis=1) / jnp.arange(1, e.shape[1] + 1)[None, :, None]
    h = jnp.tanh(jnp.concatenate([e, prefix], -1) @ p["mix"]["w"] + p["mix"]["b"])
    return h @ p["head"]["w"] + p["head"]["b"]


def test_iwrm_step_moves_along_upgrad_of_the_per_example_jacobian():
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), 3, counts=[2, 1, 2])
    tokens = np.asarray(batch["tokens"]).copy()
    tokens[3, 1:] = 0                                  # an all-pad row: left out, c = 0
    batch = {"tokens": jnp.asarray(tokens), "domain_id": batch["domain_id"],
             "sampling_weights": jnp.full((3,), 1 / 3)}
    # the per-sequence Jacobian by reverse mode over the loss vector (rows g_b)
    jac = jax.jit(jax.jacrev(
        lambda p: example_grads.example_loss_vector(token_loss_fn, p, batch)))(params)
    gs = np.concatenate([np.asarray(x, np.float64).reshape(5, -1) for x in jax.tree.leaves(jac)],
                        axis=1)
    present = np.asarray((tokens[:, 1:] != 0).sum(1) > 0)
    c = numpy_upgrad(gs, present / present.sum())
    assert c[3] == 0 and np.all(c >= 0) and np.all(gs @ (c @ gs) >= -1e-9)   # no conflict

    mixer, tx = mixing.get("iwrm"), optax.sgd(1.0)
    step = step_lib.make_train_step(apply=_apply, mixer=mixer, tx=tx, num_domains=3, pad_id=0,
                                    grad_stats=grads.make_grad_stats(grads.GradConfig(), 3),
                                    donate=False)
    new, metrics = step(state_lib.init_state(params, tx, mixer, 3, 0), batch)
    np.testing.assert_allclose(_flat(new.params) - _flat(params), -(c @ gs), rtol=2e-4, atol=2e-5)
    dom = np.asarray(batch["domain_id"])
    share = np.bincount(dom, weights=c, minlength=3) / c.sum()
    np.testing.assert_allclose(np.asarray(metrics["weights"]), share, rtol=1e-4, atol=1e-6)


def test_one_sequence_per_domain_is_upgrad_over_domains():
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(5, 9))
    jac[1] = -0.8 * jac[0] + 0.1 * rng.normal(size=9)          # a conflicting pair
    gram = jnp.asarray(jac @ jac.T, jnp.float32)
    ex = mixing.get("iwrm").example_coeffs(
        {"example_gram": gram, "token_mask": jnp.ones((5, 4)), "domain_id": jnp.arange(5)})
    up = mixing.get("upgrad")
    st = up.update(up.init(5), {"gram": gram, "count": jnp.ones(5)}, 0)
    np.testing.assert_allclose(np.asarray(ex), np.asarray(st["coeffs"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ex), numpy_upgrad(jac, np.full(5, 0.2)), rtol=1e-3,
                               atol=1e-5)
