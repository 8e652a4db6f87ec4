"""Per-example statistics of the gradient engine against a loop of jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import mixing
from mixjax.mixing import aggregators, example_grads, grads
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib

from grad_fakes import init_params, make_batch, token_loss_fn  # noqa: E402


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


def _setup():
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), 3, counts=[2, 1, 3])   # any composition
    gs = np.stack([_flat(g) for g in
                   example_grads.direct_example_grads(token_loss_fn, params, batch)])
    return params, batch, gs


def test_example_gram_and_combine_equal_a_loop_of_jax_grad():
    params, batch, gs = _setup()
    c = jnp.asarray([0.3, -0.1, 0.5, 0.2, 0.0, 0.4], jnp.float32)
    fn = grads.make_grad_stats(grads.GradConfig(strategy="jvp"), 3)   # strategy is per-domain

    @jax.jit
    def run(params, batch, c):
        out = fn(token_loss_fn, params, batch, frozenset({"example_gram"}))
        return dict(out), out.combine_examples(c)

    stats, combined = run(params, batch, c)
    assert set(stats) == {"example_gram"}
    np.testing.assert_allclose(np.asarray(stats["example_gram"]), gs @ gs.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_flat(combined), np.asarray(c, np.float64) @ gs,
                               rtol=1e-5, atol=1e-5)


def test_example_gram_with_a_param_filter_and_next_to_domain_statistics():
    params, batch, gs = _setup()
    fn = grads.make_grad_stats(grads.GradConfig(layout="rows", param_filter="head"), 3)
    out = jax.jit(lambda p, b: dict(fn(token_loss_fn, p, b, frozenset({"example_gram", "gram"}))))(
        params, batch)
    mask = np.concatenate([np.full(np.size(x), "head" in jax.tree_util.keystr(path))
                           for path, x in jax.tree_util.tree_leaves_with_path(params)])
    sel = gs[:, mask]
    np.testing.assert_allclose(np.asarray(out["example_gram"]), sel @ sel.T, rtol=1e-5, atol=1e-5)
    assert out["gram"].shape == (3, 3)


def test_an_example_coeffs_mixer_steps_along_sum_b_c_b_g_b():
    """One SGD(lr=1) step of a mixer with model_gradient='example_coeffs' moves the
    parameters by exactly -sum_b c_b g_b, c = UPGrad over the per-sequence Gram."""

    class UPGradEx(mixing.Mixer):
        name = "test_upgrad_ex"   # not registered: built directly
        requires = frozenset({"example_gram"})
        model_gradient = "example_coeffs"
        default_apply_to = "loss"

        def gradient_coeffs(self, state, stats):
            b = stats["example_gram"].shape[0]
            return aggregators.upgrad_weights(stats["example_gram"], jnp.full((b,), 1.0 / b))

    params, batch, gs = _setup()
    mixer, tx = UPGradEx(), optax.sgd(1.0)
    # token_loss_fn reads batch["tokens"]; the step's apply maps inputs to logits, so wrap it
    apply = _apply_of(params)
    step = step_lib.make_train_step(apply=apply, mixer=mixer, tx=tx, num_domains=3, pad_id=0,
                                    grad_stats=grads.make_grad_stats(grads.GradConfig(), 3),
                                    jit=True, donate=False)
    state = state_lib.init_state(params, tx, mixer, 3, 0)
    b = {"tokens": batch["tokens"], "domain_id": batch["domain_id"],
         "sampling_weights": jnp.full((3,), 1 / 3)}
    new, _ = step(state, b)
    c = np.asarray(aggregators.upgrad_weights(jnp.asarray(gs @ gs.T, jnp.float32),
                                              jnp.full((6,), 1 / 6)), np.float64)
    assert np.all(c >= 0) and np.any(c > 0)
    np.testing.assert_allclose(_flat(new.params) - _flat(params), -(c @ gs), rtol=1e-4, atol=1e-5)


def _apply_of(params):
    """The grad_fakes model as ``apply(params, inputs) -> logits`` (same maths)."""
    del params

    def apply(p, x):
        e = p["embed"][x]
        prefix = jnp.cumsum(e, axis=1) / jnp.arange(1, e.shape[1] + 1)[None, :, None]
        h = jnp.tanh(jnp.concatenate([e, prefix], -1) @ p["mix"]["w"] + p["mix"]["b"])
        return h @ p["head"]["w"] + p["head"]["b"]

    return apply
