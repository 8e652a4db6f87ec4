"""Update rules of the gradient-signal mixers (DoGE, DGA, R&B) on hand-made statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing import statistics
from mixjax.mixing.doge import clip_scale


def test_doge_universal_matches_reference_rule():
    """The reference's train==target branch, written out in numpy."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 10)) * np.array([[1.0], [3.0], [0.5], [8.0]])
    gram = g @ g.T
    lr, mu, max_norm = 1e-3, 0.05, 5.0
    mixer = mixing.get("doge", mu=mu, max_grad_norm=max_norm)
    assert mixer.requires == {"gram", "count", "lr"} and mixer.apply_to == "loss"
    state = mixer.init(4)
    stats = {"gram": jnp.asarray(gram, jnp.float32), "count": jnp.ones(4),
             "lr": jnp.asarray(lr, jnp.float32)}
    new = mixer.update(state, stats, jnp.asarray(0))
    # numpy reference: clip each row, scores, mirror step
    norms = np.linalg.norm(g, axis=1)
    gc = g * np.minimum(1, max_norm / (norms + 1e-6))[:, None]
    sm = gc @ gc.T
    w = sm.sum(1) - np.diag(sm)
    s = np.clip(lr * w / (np.linalg.norm(gc, axis=1).mean() + 1e-6), 0, 5 * lr)
    a = np.exp(np.log(np.full(4, 0.25)) + s / mu)
    a /= a.sum()
    np.testing.assert_allclose(new["weights"], a, rtol=1e-5)
    # the reference's average starts counting at alpha_1 (alpha_0 is not in it)
    np.testing.assert_allclose(mixer.average(new), a, rtol=1e-5)
    # the model gradient coefficients: new alpha times the clip factors
    np.testing.assert_allclose(mixer.gradient_coeffs(new, stats),
                               a * np.minimum(1, max_norm / (norms + 1e-6)), rtol=1e-5)
    # a domain whose gradient opposes the others is pushed down; with dw_min = 0 its
    # negative score is clipped to 0, like a domain that is merely orthogonal
    g2 = np.stack([np.ones(5), np.ones(5) * 1.1, -np.ones(5)])
    st = {"gram": jnp.asarray(g2 @ g2.T), "count": jnp.ones(3), "lr": jnp.asarray(0.01)}
    s2 = mixer.update(mixer.init(3), st, jnp.asarray(0))
    assert s2["weights"][2] < 1 / 3 < s2["weights"][0]
    assert float(s2["weights"][2]) == pytest.approx(float(s2["weights"][1]))


def test_doge_ood_uses_target_dots_and_skips_absent_domains():
    mixer = mixing.get("doge", target="ood", mu=0.01, max_grad_norm=1.0)
    assert "target_batch" in statistics.needs_of(mixer.requires)
    assert mixer.requires == {"grad_dot", "grad_norm", "target_grad_norm", "count", "lr"}
    stats = {"grad_dot": jnp.asarray([2.0, -1.0, 5.0]), "grad_norm": jnp.asarray([2.0, 1.0, 4.0]),
             "target_grad_norm": jnp.asarray(2.0), "count": jnp.asarray([10.0, 10.0, 0.0]),
             "lr": jnp.asarray(1e-3)}
    s = mixer.scores(stats)
    # clipped dots: 2*(1/2)*(1/2)=0.5, -1*1*(1/2)=-0.5; mean clipped norm of present = 1
    np.testing.assert_allclose(s, [1e-3 * 0.5 / (1 + 1e-6), 0.0, 0.0], rtol=1e-4)
    new = mixer.update(mixer.init(3), stats, jnp.asarray(0))
    assert new["weights"][0] > new["weights"][1] == pytest.approx(new["weights"][2])


def test_doge_config_errors():
    with pytest.raises(ValueError, match="target must be one of"):
        mixing.get("doge", target="mix")
    with pytest.raises(ValueError, match="mu must be > 0"):
        mixing.get("doge", mu=0.0)
    assert float(clip_scale(jnp.asarray(10.0), 0.0)) == 1.0


def test_dga_exponentiated_alignment_with_ema_and_schedule():
    mixer = mixing.get("dga", eta=2.0, ema=0.5, update_every=2)
    assert mixer.requires == {"grad_dot"} and mixer.apply_to == "sampling"
    st = mixer.init(3)
    dots = {"grad_dot": jnp.asarray([0.5, 0.0, -0.5])}
    st1 = mixer.update(st, dots, jnp.asarray(0))
    a = np.exp(2.0 * np.array([0.5, 0.0, -0.5]))
    a /= a.sum()
    np.testing.assert_allclose(st1["alpha"], a, rtol=1e-5)
    np.testing.assert_allclose(st1["weights"], 0.5 / 3 + 0.5 * a, rtol=1e-5)
    st2 = mixer.update(st1, dots, jnp.asarray(1))          # off-schedule: unchanged
    np.testing.assert_allclose(st2["weights"], st1["weights"])
    np.testing.assert_allclose(st2["alpha"], st1["alpha"])
    assert float(st2["num_weights"]) == 3.0
    st3 = mixer.update(st2, dots, jnp.asarray(2))
    assert st3["weights"][0] > st1["weights"][0]
    with pytest.raises(ValueError, match="ema must be in"):
        mixing.get("dga", ema=1.0)


def test_rnb_softmax_of_normalised_gram_product():
    g = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]])
    gram = g @ g.T
    mixer = mixing.get("rnb", lam=2.0)
    st = mixer.update(mixer.init(3), {"gram": jnp.asarray(gram), "count": jnp.ones(3)},
                      jnp.asarray(0))
    v = gram @ np.full(3, 1 / 3)
    v /= np.linalg.norm(v)
    want = np.exp(2 * v) / np.exp(2 * v).sum()
    np.testing.assert_allclose(st["weights"], want, rtol=1e-5)
    # an absent domain keeps its share
    st2 = mixer.update(st, {"gram": jnp.asarray(gram * np.array([1, 1, 0])[:, None] *
                                                 np.array([1, 1, 0])[None, :]),
                            "count": jnp.asarray([5.0, 5.0, 0.0])}, jnp.asarray(1))
    np.testing.assert_allclose(st2["weights"][2], st["weights"][2], rtol=1e-6)
    np.testing.assert_allclose(float(st2["weights"].sum()), 1.0, rtol=1e-6)


def test_guarded_update_blames_nonfinite_gram_row():
    mixer = mixing.get("rnb")
    gram = jnp.eye(3).at[1, 1].set(jnp.nan)
    st = mixing.guarded_update(mixer, mixer.init(3), {"gram": gram, "count": jnp.ones(3)},
                               jnp.asarray(0))
    assert int(st["nonfinite_domain"]) == 1
    np.testing.assert_allclose(st["weights"], np.full(3, 1 / 3))


def test_mixers_jit():
    for name, stats in [("doge", {"gram": jnp.eye(2), "count": jnp.ones(2), "lr": 1e-3}),
                        ("dga", {"grad_dot": jnp.ones(2)}),
                        ("rnb", {"gram": jnp.eye(2), "count": jnp.ones(2)})]:
        m = mixing.get(name)
        out = jax.jit(m.update)(m.init(2), stats, jnp.asarray(0))
        assert np.isfinite(np.asarray(out["weights"])).all()
