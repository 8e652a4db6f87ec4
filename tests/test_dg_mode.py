"""MODE-F (mixjax.dg.algorithms.mode) against its rule restated in numpy: the Fourier
amplitude mixture that keeps the phase, the signed-gradient ascent of the mixing weights with
the code's projection (Rxsw/MODE utils/MODE.py MODE_F.main; gradients by central differences
in float64 here), and the beta mix of the real and explored losses (main.py Trainer.train)."""

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.dg.algorithms.mode import amplitude_set, explore, explored_images
from mixjax.dg.networks import NetSpec

from dg_fakes import build_algorithm

NET = NetSpec(input_shape=(4, 4, 1), num_classes=3, featurizer="mlp", mlp_width=8)


def np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def np_images(w, amp_set, phase, gamma):
    wn = w / (w.sum(1, keepdims=True) + 1e-6)
    amp = (1 - gamma) * amp_set[:, 0] + gamma * np.einsum("nm,nm...->n...", wn, amp_set)
    return np.real(np.fft.ifft2(amp * np.exp(1j * phase), axes=(1, 2)))


def test_amplitude_mixture_keeps_the_phase_and_reconstructs_the_image():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 4, 2)).astype(np.float32)
    w = rng.uniform(size=(5, 3)).astype(np.float32)
    w_own = np.eye(3, dtype=np.float32)[[0] * 5]

    @jax.jit
    def run(x, w, w_own):
        amp_set, phase = amplitude_set(x, jax.random.key(0), 3)
        return (amp_set, phase, explored_images(w_own, amp_set, phase, 1.0),
                explored_images(w, amp_set, phase, 0.0), explored_images(w, amp_set, phase, 0.7))

    amp_set, phase, own, gamma0, mixed = run(jnp.asarray(x), w, w_own)
    f = np.fft.fft2(x.astype(np.float64), axes=(1, 2))
    np.testing.assert_allclose(np.asarray(amp_set[:, 0]), np.abs(f), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(phase), np.angle(f), atol=1e-5)
    for j in (1, 2):   # every other entry is the amplitude of some example of the batch
        got = np.asarray(amp_set[:, j])
        assert all(any(np.allclose(g, np.abs(f[i]), atol=1e-4) for i in range(5)) for g in got)
    # all weight on the own amplitude, or gamma = 0: the image itself
    np.testing.assert_allclose(np.asarray(own), x, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gamma0), x, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mixed), np_images(w.astype(np.float64), np.asarray(amp_set, np.float64),
                                                            np.asarray(phase, np.float64), 0.7), rtol=1e-4, atol=1e-5)


def test_signed_ascent_on_the_mixing_weights_matches_numpy():
    rng = np.random.default_rng(1)
    n, m, c, steps, mu, gamma = 4, 3, 3, 3, 0.05, 0.8
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    y = np.asarray([0, 1, 2, 1])
    wlin = rng.normal(size=(16, c))
    amp_set, phase = amplitude_set(jnp.asarray(x), jax.random.key(3), m)
    a64, p64 = np.asarray(amp_set, np.float64), np.asarray(phase, np.float64)

    def np_loss(w):
        lg = np_images(w, a64, p64, gamma).reshape(n, -1) @ wlin
        return -np_log_softmax(lg)[np.arange(n), y].mean()

    w0 = np.full((n, m), 1 / m)
    w, losses = w0.copy(), []
    for _ in range(steps):
        g = np.zeros_like(w)
        for idx in np.ndindex(*w.shape):
            d = np.zeros_like(w)
            d[idx] = 1e-6
            g[idx] = (np_loss(w + d) - np_loss(w - d)) / 2e-6
        assert np.abs(g).min() > 1e-4      # the signs are well defined in float32 too
        losses.append(np_loss(w))
        w = np.clip(w0 + np.clip(w + mu * np.sign(g) - w0, -1, 1), 0, 1)
    logits_fn = lambda z: z.reshape(n, -1) @ jnp.asarray(wlin, jnp.float32)  # noqa: E731
    x_fake, got = jax.jit(explore, static_argnums=(0, 7))(logits_fn, jnp.asarray(x), jnp.asarray(y), amp_set,
                                                          phase, gamma, mu, steps)
    np.testing.assert_allclose(np.asarray(got), losses, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(x_fake), np_images(w, a64, p64, gamma), rtol=1e-4, atol=1e-5)
    assert losses[-1] > losses[0]          # ascent: the explored batch is harder


def test_mode_loss_mixes_real_and_explored_losses_with_the_search_held_fixed():
    alg, hp = build_algorithm("mode", NET, num_envs=2, batch_size=3, mode_steps=2, mode_num_mix=3, mode_beta=0.3)
    assert float(hp["mode_mu"]) == np.float32(0.05) and float(hp["mode_gamma"]) == 1.0   # the code's defaults
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(2, 3, 4, 4, 1)), jnp.float32)
    ys = jnp.asarray([[0, 1, 2], [2, 2, 0]], jnp.int32)
    state = alg.init(jax.random.key(0), hp)
    key = jax.random.key(5)
    x, y = xs.reshape(6, 4, 4, 1), ys.reshape(-1)

    def both(params):   # one compile: the algorithm's loss and gradient, and the rule restated
        loss, m = alg.loss(params, hp, state, xs, ys, key)
        amp_set, phase = amplitude_set(x, key, 3)
        x_fake, _ = explore(lambda z: alg.logits(params, z), x, y, amp_set, phase, 1.0, 0.05, 2)
        x_fake = jax.lax.stop_gradient(x_fake)   # the explored images are a fixed input

        def plain(p):
            lp = jax.nn.log_softmax(alg.logits(p, jnp.concatenate([x, x_fake])))[jnp.arange(12), jnp.concatenate([y, y])]
            return -0.7 * lp[:6].mean() - 0.3 * lp[6:].mean()

        got = jax.grad(lambda p: alg.loss(p, hp, state, xs, ys, key)[0])(params)
        return loss, m, alg.logits(params, jnp.concatenate([x, x_fake])), got, jax.grad(plain)(params)

    loss, m, logits, got, want = jax.jit(both)(state["params"])
    lp = np_log_softmax(np.asarray(logits, np.float64))[np.arange(12), np.tile(np.asarray(y), 2)]
    ce_real, ce_fake = -lp[:6].mean(), -lp[6:].mean()
    np.testing.assert_allclose(float(m["loss_real"]), ce_real, rtol=1e-5)
    np.testing.assert_allclose(float(m["loss_explored"]), ce_fake, rtol=1e-4)
    np.testing.assert_allclose(float(loss), 0.7 * ce_real + 0.3 * ce_fake, rtol=1e-4)
    assert not np.allclose(lp[:6], lp[6:])   # the explored batch differs from the real one
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
