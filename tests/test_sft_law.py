"""The SFT effective-data mixing law: parity with the formula, recovery of its parameters
from generated runs with noise, and the optimal weights against a dense simplex grid."""

import numpy as np
import pytest

from mixjax.search import sft_law as sl
from mixjax.search.regmix import FitError

C, A, B, RHO = [1.2, 0.8, 1.0], [0.6, 0.9, 0.5], [0.5, 0.35, 0.6], [0.5, 0.7, 0.4]
KAPPA = np.array([[0, 0.3, 0.1], [0.2, 0, 0.4], [0.05, 0.5, 0]])


def _runs():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), 12)
    base = np.full(3, 1e6 / 3)
    pert = []
    for j in range(3):             # the paper's design: perturb one domain's amount
        for f in (0.5, 2.0):
            x = base.copy()
            x[j] *= f
            pert.append(x)
    return np.concatenate([w * 1e6, w[:6] * 3e6, pert]), rng


def _true(scale):
    params = [np.array([C[i], np.log(A[i]), np.log(B[i]), np.log(RHO[i] / (1 - RHO[i])),
                        *np.log(KAPPA[i][np.arange(3) != i])]) for i in range(3)]
    return sl.SFTLaw(params, scale, [0.0] * 3, True)


def test_predict_is_the_formula_restated():
    x, _ = _runs()
    law = _true(7e5)
    u = x / 7e5
    for i in range(3):
        eff = u[:, i] + sum(KAPPA[i, j] * u[:, j] ** RHO[i] for j in range(3) if j != i)
        np.testing.assert_allclose(law.predict(x)[:, i], C[i] + A[i] * eff ** -B[i], rtol=1e-12)


def test_fit_recovers_the_law_and_its_optimum_matches_a_dense_grid():
    x, rng = _runs()
    truth = _true(float(x.sum(axis=1).mean()))       # the fit's own token unit
    y = truth.predict(x) * (1 + 1e-3 * rng.normal(size=x.shape))
    law = sl.fit_sft_law(x, y, restarts=4)
    got = law.as_dict()
    np.testing.assert_allclose(got["b"], B, rtol=0.1)
    np.testing.assert_allclose(got["rho"], RHO, atol=0.05)
    np.testing.assert_allclose(got["c"], C, atol=0.03)
    np.testing.assert_allclose(law.transfer(), KAPPA, atol=0.06)
    w, val = sl.optimal_weights(law, 1e6)
    g = np.linspace(0, 1, 201)
    grid = np.array([(p, q, 1 - p - q) for p in g for q in g if p + q <= 1 + 1e-12]).clip(0, 1)
    true_avg = truth.predict(grid * 1e6).mean(axis=1)
    # the found mixture is as good under the *true* law as the best grid point (step 0.005)
    assert truth.predict(w[None] * 1e6).mean() <= true_avg.min() + 1e-5
    np.testing.assert_allclose(w, grid[np.argmin(true_avg)], atol=0.02)
    # and the fitted law's own optimum beats every grid point of the fitted law
    assert val <= law.predict(grid * 1e6).mean(axis=1).min() + 1e-12


def test_bad_input_names_the_problem():
    x, _ = _runs()
    with pytest.raises(FitError, match="at least 7 runs"):
        sl.fit_sft_law(x[:5], x[:5])
    with pytest.raises(FitError, match="same shape"):
        sl.fit_sft_law(x, x[:, :2])
