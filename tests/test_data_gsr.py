"""GSR (mixjax.data.gsr): the closed-form gradient and Hessian of the weighted last-layer
objective against finite differences, the influence scores against retraining with a perturbed
weight (implicit differentiation checked numerically), and the outer loop on a small spurious
correlation (minority groups gain weight, worst-group accuracy rises)."""

import numpy as np
import pytest

from mixjax.data import gsr
from mixjax.data.sources import DataError


def _problem(seed=0, n=40, d=3, k=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, k, n)
    x[np.arange(n), y % d] += 1.5
    return x, y, rng.uniform(0.5, 1.5, n)


def test_gradient_and_hessian_match_finite_differences():
    x, y, s = _problem()
    k, lam = 3, 0.05
    theta = np.random.default_rng(1).normal(size=(x.shape[1] + 1) * k) * 0.3
    j, g = gsr.objective(theta, x, y, s, k, lam)
    eps = 1e-6
    e = np.eye(theta.size)
    g_fd = np.array([(gsr.objective(theta + eps * e[i], x, y, s, k, lam)[0]
                      - gsr.objective(theta - eps * e[i], x, y, s, k, lam)[0]) / (2 * eps)
                     for i in range(theta.size)])
    np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-8)
    h_fd = np.stack([(gsr.objective(theta + eps * e[i], x, y, s, k, lam)[1]
                      - gsr.objective(theta - eps * e[i], x, y, s, k, lam)[1]) / (2 * eps)
                     for i in range(theta.size)])
    np.testing.assert_allclose(gsr.hessian(theta, x, y, s, k, lam), h_fd, rtol=1e-5, atol=1e-7)
    # the per-example gradients sum to the data term of grad J
    pen = np.ones((x.shape[1] + 1, k))
    pen[-1] = 0
    np.testing.assert_allclose(s @ gsr.example_grads(theta, x, y, k) / len(y),
                               g - 2 * lam * pen.reshape(-1) * theta, atol=1e-12)


def test_influence_is_the_derivative_of_the_target_loss_under_retraining():
    x, y, s = _problem(n=30)
    k, lam = 3, 0.05
    xt, yt, _ = _problem(seed=5, n=12)
    gt = np.arange(12) % 2
    q = np.array([0.3, 0.7])
    theta = gsr.fit(x, y, s, k, lam)
    score = gsr.influence_scores(theta, x, y, s, k, lam, xt, yt, gt, q)

    def target_loss(weights):
        ls = gsr.losses(gsr.fit(x, y, weights, k, lam), xt, yt, k)
        return q[0] * ls[gt == 0].mean() + q[1] * ls[gt == 1].mean()

    eps = 1e-3
    for i in (0, 7, 19):
        d = np.zeros(len(y))
        d[i] = eps
        fd = (target_loss(s + d) - target_loss(s - d)) / (2 * eps)
        assert -fd == pytest.approx(score[i], rel=2e-3, abs=1e-7)


def _spurious(rng, counts, d=6):
    g = np.repeat(np.arange(4), counts)
    y, a = g // 2, g % 2
    x = rng.normal(size=(len(g), d))
    x[:, 0] = (2 * y - 1) + rng.normal(size=len(g))
    x[:, 1] = (2 * a - 1) + rng.normal(size=len(g)) * 0.3
    return x, y, g


def test_gsr_upweights_minority_groups_and_raises_worst_group_accuracy():
    rng = np.random.default_rng(0)
    x, y, g = _spurious(rng, [190, 10, 10, 190])
    xt, yt, gt = _spurious(rng, [8] * 4)
    xv, yv, gv = _spurious(rng, [30] * 4)
    res = gsr.gsr(x, y, xt, yt, gt, xv, yv, gv, iterations=6)
    minority = (g == 1) | (g == 2)
    assert res.weights[minority].mean() > 1.5 * res.weights[~minority].mean()
    assert res.iteration > 0 and res.val_worst_acc[res.iteration] > res.val_worst_acc[0]
    assert np.all(res.weights >= 0)
    np.testing.assert_allclose(gsr.balanced_groups([0, 0, 0, 1]), [2 / 3, 2 / 3, 2 / 3, 2])


def test_gsr_bad_input_names_the_problem():
    x, y, _ = _problem()
    with pytest.raises(DataError, match="non-empty group-labelled target set"):
        gsr.gsr(x, y, x[:0], y[:0], y[:0], x, y, y)
    with pytest.raises(DataError, match="step > 0"):
        gsr.gsr(x, y, x, y, y, x, y, y, step=0.0)


@pytest.mark.slow
def test_gsr_evidence_on_a_spurious_correlation():
    """docs/selection.md's GSR rows (3 seeds, about 30 s): GSR's last layer beats ERM's
    worst-group test accuracy, and the minority groups' share of the weight grows."""
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import gsr_evidence as ev
    out, minority = ev.run([0, 1, 2])
    for t in (10, 30):
        m, h = ev._t(np.asarray(out[f"gsr_{t}"]) - np.asarray(out["erm"]))
        assert m - h > 0, (t, out)
        assert min(minority[t]) > 0.025
