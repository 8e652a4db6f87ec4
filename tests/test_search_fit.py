"""Mixture designs, constraints, the RegMix fit/search and the mixture laws (numpy/scipy only)."""

import numpy as np
import pytest

from mixjax.search import designs, laws, regmix

DOMAINS = ("a", "b", "c", "d")


# ------------------------------------------------------------------------- designs
@pytest.mark.parametrize("name", designs.DESIGNS)
def test_designs_are_on_the_simplex_and_respect_constraints(name):
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    if name == "onehot":
        cons = designs.make_constraints(DOMAINS)
        rows = designs.make_design(name, 8, DOMAINS, prior=prior, constraints=cons)
        np.testing.assert_array_equal(rows[:4], np.eye(4))
        np.testing.assert_allclose(rows[4], [0, 1 / 3, 1 / 3, 1 / 3])
    else:
        cons = designs.make_constraints(DOMAINS, min_weight={"d": 0.05},
                                        max_weight={"a": 0.5})
        rows = designs.make_design(name, 16, DOMAINS, prior=prior, constraints=cons, seed=3)
        assert rows.shape == (16, 4)
        assert cons.holds(rows).all()
        assert len(designs.dedupe(rows)) == 16
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-9)
    assert (rows >= 0).all()


def test_regmix_generator_follows_the_reference_rules():
    prior = np.array([0.5, 0.3, 0.15, 0.05])
    rows = designs.regmix(64, prior, minimum=1e-2, max_usage=3.0)
    # upper bound from the untempered prior: min(3 * prior, 1)
    assert np.all(rows <= np.minimum(3 * prior, 1.0) + 1e-2)
    # zeroed below the minimum, on a grid of the minimum (up to the final renormalisation)
    nz = rows[rows > 0]
    assert nz.min() >= 1e-2 - 1e-9
    assert len(designs.dedupe(rows)) == 64
    # same seed -> same design (the reference is seeded with 42)
    np.testing.assert_array_equal(rows, designs.regmix(64, prior, minimum=1e-2, max_usage=3.0))


def test_lhs_without_constraints_is_a_latin_hypercube_under_the_map():
    rows = designs.lhs(10, 3, seed=0)
    assert rows.shape == (10, 3)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)


def test_empty_constraints_and_epoch_bound_are_refused_with_the_culprit():
    with pytest.raises(designs.DesignError, match="sum to 1.2"):
        designs.make_constraints(DOMAINS, min_weight={"a": 0.6, "b": 0.6})
    with pytest.raises(designs.DesignError, match="'c'"):
        designs.make_constraints(DOMAINS, min_weight={"c": 0.5}, max_weight={"c": 0.2})
    with pytest.raises(designs.DesignError, match="unknown domain 'z'"):
        designs.make_constraints(DOMAINS, max_weight={"z": 0.1})
    # 2 epochs of 100 tokens each for a 1000-token budget: at most 0.2 each -> sum 0.8 < 1
    with pytest.raises(designs.DesignError, match="sum to 0.8"):
        designs.make_constraints(DOMAINS, max_epochs=2, budget_tokens=1000,
                                 token_counts=[100] * 4)
    cons = designs.make_constraints(DOMAINS, max_epochs=2, budget_tokens=1000,
                                    token_counts=[100, 100, 100, 1000])
    np.testing.assert_allclose(cons.hi, [0.2, 0.2, 0.2, 1.0])


# -------------------------------------------------------------------------- regmix
def synthetic_losses(x, seed=0, noise=0.0):
    """A smooth target with a known interior optimum (plus optional noise)."""
    opt = np.array([0.1, 0.4, 0.3, 0.2])
    y = 2.0 + 3.0 * np.sum((x - opt) ** 2, axis=1)
    return y + noise * np.random.default_rng(seed).normal(size=len(y)), opt


def test_regmix_fit_ranks_held_out_mixtures_and_search_finds_the_optimum():
    x = designs.dirichlet(96, 4, seed=0)
    y, opt = synthetic_losses(x, noise=0.005)
    out = regmix.run(x, y, prior=[0.25] * 4, regressor="lightgbm", num_samples=20_000,
                     top_k=64, boot=2, params={"min_data_in_leaf": 5})
    cv = out["cv"]["lightgbm"]
    constant_mae = np.abs(y - y.mean()).mean()       # what predicting the mean scores
    assert cv["spearman"] > 0.8 and cv["mae"] < 0.6 * constant_mae
    assert np.abs(out["weights"] - opt).max() < 0.12
    assert np.isfinite(out["bootstrap"]["pred_found_std"])
    lin = regmix.cross_validate(x, y, "linear")
    assert lin["spearman"] > 0.3     # a quadratic bowl is not linear: lower, still ranked


def test_regmix_linear_recovers_a_linear_target_exactly():
    x = designs.dirichlet(20, 4, seed=1)
    y = 1.0 + x @ np.array([0.3, -0.2, 0.5, 0.1])
    cv = regmix.cross_validate(x, y, "linear")
    assert cv["mae"] < 1e-8 and cv["spearman"] > 0.999


def test_regmix_constraints_hold_for_the_found_mixture():
    x = designs.dirichlet(48, 4, seed=2)
    y, _ = synthetic_losses(x)
    cons = designs.make_constraints(DOMAINS, max_weight={"b": 0.2})
    out = regmix.run(x, y, prior=[0.25] * 4, regressor="linear", num_samples=20_000,
                     constraints=cons, boot=0)
    assert cons.holds(out["weights"]).all()
    assert out["weights"][1] <= 0.2 + 1e-12


def test_target_is_checked():
    losses = np.array([[1.0, 2.0, 3.0]])
    ev, dom = ("a", "b", "h"), ("a", "b")
    assert regmix.target_values(losses, ev, dom, "average")[0] == pytest.approx(1.5)
    assert regmix.target_values(losses, ev, dom, "h")[0] == 3.0        # held-out domain
    assert regmix.target_values(losses, ev, dom, {"a": 1, "h": 3})[0] == pytest.approx(2.5)
    with pytest.raises(regmix.FitError, match="'zz' is not in the data"):
        regmix.target_values(losses, ev, dom, "zz")


# --------------------------------------------------------------------------- laws
def ye_truth(k=3):
    a = np.log([1.5, 2.0, 1.2])[:k]
    u = np.array([[-0.7, 0.6, 0.5], [0.7, -0.9, 0.4], [0.5, 0.8, -0.5]])[:k, :k]
    return a, u


def test_ye_law_recovers_its_parameters_and_search_finds_the_known_optimum():
    a, u = ye_truth()
    r = designs.lhs(10, 3, seed=1)
    losses = np.stack([np.exp(a[i]) + np.exp(r @ u[i]) for i in range(3)], axis=1)
    for i in range(3):
        fit = laws.fit_ye(r, losses[:, i], restarts=4)
        np.testing.assert_allclose(fit.params, np.concatenate([[a[i]], u[i]]), atol=1e-4)
    pi = np.full(3, 1 / 3)
    law = laws.fit_target_law(r, losses, pi, restarts=4)
    cons = designs.make_constraints(("a", "b", "c"))
    w, val = laws.minimise_on_simplex(lambda h: law.predict(h[None])[0], cons.lo, cons.hi)
    # the true optimum, by brute force on a 1/400 grid of the simplex
    g = np.array([[i, j, 400 - i - j] for i in range(401) for j in range(401 - i)]) / 400
    true = sum(pi[i] * (np.exp(a[i]) + np.exp(g @ u[i])) for i in range(3))
    assert np.abs(w - g[np.argmin(true)]).max() < 5e-3
    assert val == pytest.approx(true.min(), abs=1e-5)
    # with a box constraint the optimum moves onto its face
    cons = designs.make_constraints(("a", "b", "c"), max_weight={"c": 0.2})
    w, _ = laws.minimise_on_simplex(lambda h: law.predict(h[None])[0], cons.lo, cons.hi)
    ok = g[:, 2] <= 0.2
    assert w[2] <= 0.2 + 1e-9
    assert np.abs(w - g[ok][np.argmin(true[ok])]).max() < 5e-3


def test_ye_jacobian_equals_finite_differences():
    rng = np.random.default_rng(0)
    p, r = rng.normal(0, 1, 5), rng.dirichlet(np.ones(4), size=7)
    eps, jac = 1e-6, laws.ye_jacobian(p, r)
    num = np.stack([(laws.ye_predict(p + eps * e, r) - laws.ye_predict(p - eps * e, r)) / (2 * eps)
                    for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(jac, num, rtol=1e-6, atol=1e-9)


def test_ye_law_needs_enough_mixtures():
    with pytest.raises(regmix.FitError, match="at least 6 mixtures"):
        laws.fit_ye(designs.lhs(5, 4, seed=0), np.ones(5))


def test_step_law_recovers_parameters():
    s = np.array([100, 200, 400, 800, 1600, 3200], np.float64)
    p = np.array([np.log(1.8), np.log(50.0), 0.6])
    fit = laws.fit_power(s, laws.power_predict(p, s), restarts=16)
    np.testing.assert_allclose(fit.params, p, rtol=1e-3, atol=1e-4)
    assert fit.predict(np.array([1e5]))[0] == pytest.approx(laws.power_predict(p, 1e5), rel=1e-5)


def scaling_grid(k=3, seed=0):
    n = np.array([1e5, 3e5, 1e6, 3e6])
    d = np.array([1e6, 4e6, 1.6e7])
    h = np.random.default_rng(seed).dirichlet(np.full(k, 2.0), 8)
    grid = [(a, b, c) for a in n for b in d for c in h]
    return (np.array([g[0] for g in grid]), np.array([g[1] for g in grid]),
            np.array([g[2] for g in grid]))


def test_shukor_additive_law_recovers_parameters_and_extrapolates_in_size():
    n, d, h = scaling_grid()
    truth = np.array([2.0, *np.log([0.5, 0.8, 0.3]), *np.log([0.5, 0.3, 0.7]),
                      np.log(50.0), np.log(0.3), np.log(200.0), np.log(0.25)])
    y = laws.additive_predict(truth, n, d, h)
    fit_rows = n < 3e6                    # the largest size is held out
    fit = laws.fit_scaling_law("additive", n[fit_rows], d[fit_rows], h[fit_rows], y[fit_rows],
                               restarts=6)
    np.testing.assert_allclose(fit.params, truth, atol=2e-3)
    rel = np.abs(fit.predict(n[~fit_rows], d[~fit_rows], h[~fit_rows]) / y[~fit_rows] - 1)
    assert rel.max() < 1e-4


def test_shukor_joint_law_fits_and_extrapolates_in_size():
    n, d, h = scaling_grid(seed=1)
    k = 3
    truth = np.array([2.0, *np.log([0.5, 0.8, 0.3]), *np.log([0.5, 0.3, 0.7]),
                      *np.log([30.0, 60.0, 40.0]), np.log(1.2), np.log(0.3),
                      *np.log([100.0, 300.0, 200.0]), np.log(0.8), np.log(0.25)])
    assert len(truth) == laws.num_params("joint", k)
    y = laws.joint_predict(truth, n, d, h)
    fit_rows = n < 3e6
    fit = laws.fit_scaling_law("joint", n[fit_rows], d[fit_rows], h[fit_rows], y[fit_rows],
                               restarts=24)
    assert fit.residual_rms < 1e-6
    rel = np.abs(fit.predict(n[~fit_rows], d[~fit_rows], h[~fit_rows]) / y[~fit_rows] - 1)
    assert rel.max() < 1e-3
    # the mixture-dependent scale terms are identified: the optimum moves with N as in truth
    cons = designs.make_constraints(("a", "b", "c"))
    for big_n in (1e5, 1e8):
        def f_true(q):
            return laws.joint_predict(truth, big_n, 1e7, q[None])[0]

        def f_fit(q):
            return fit.predict(big_n, 1e7, q[None])[0]

        w_true, _ = laws.minimise_on_simplex(f_true, cons.lo, cons.hi)
        w_fit, _ = laws.minimise_on_simplex(f_fit, cons.lo, cons.hi)
        assert np.abs(w_true - w_fit).max() < 0.02


def test_scaling_law_needs_enough_runs():
    with pytest.raises(regmix.FitError, match="needs at least 12"):
        laws.fit_scaling_law("additive", np.ones(5), np.ones(5), np.ones((5, 3)) / 3,
                             np.ones(5))


def test_step_law_nesting_extrapolates_each_proxy_history():
    from mixjax.search import pipeline, swarm
    steps = [50, 100, 150, 200, 250]
    truth = {(p, j): np.array([np.log(1.5 + 0.1 * p), np.log(20.0 + j), 0.5])
             for p in range(2) for j in range(2)}
    table = np.array([[[laws.power_predict(truth[p, j], s) for j in range(2)] for p in range(2)]
                      for s in steps])
    res = swarm.SwarmResult(losses=table[-1], eval_domains=("a", "b"),
                            alive=np.array([True, True]), died_at=np.array([-1, -1]),
                            steps=250, seconds=0.0,
                            history=[(s, table[i]) for i, s in enumerate(steps[:-1])])
    got = pipeline.extrapolate_losses(res, res.alive, 5000.0, restarts=8)
    want = np.array([[laws.power_predict(truth[p, j], 5000.0) for j in range(2)]
                     for p in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_regmix_warns_when_the_regressor_is_flat():
    # 16 proxies: LightGBM's default min_data_in_leaf (20) allows no split -> constant model
    x = designs.dirichlet(16, 4, seed=4)
    y, _ = synthetic_losses(x)
    out = regmix.run(x, y, prior=[0.25] * 4, regressor="lightgbm", num_samples=2000, boot=0,
                     folds=2)
    assert out["ties_beyond_top_k"] > 0 and "flat" in out["warning"]
    out = regmix.run(x, y, prior=[0.25] * 4, regressor="linear", num_samples=2000, boot=0,
                     folds=2)
    assert out["ties_beyond_top_k"] == 0 and "warning" not in out


def test_scaling_law_search_reports_the_held_out_size_and_finds_the_law_optimum():
    """``run_scaling_law`` (the ``--sizes`` search) on data generated by an additive law:
    fitted without the largest N it predicts that N's runs, and the weights it returns
    are the true law's optimum at the target (N, D)."""
    n, d, h = scaling_grid(seed=2)
    truth = np.array([2.0, *np.log([0.5, 0.8, 0.3]), *np.log([0.5, 0.3, 0.7]),
                      np.log(50.0), np.log(0.3), np.log(200.0), np.log(0.25)])
    y = laws.additive_predict(truth, n, d, h)
    cons = designs.make_constraints(("a", "b", "c"))
    rec = laws.run_scaling_law("additive", n, d, h, y, 1e8, 1e9, cons, restarts=6)
    ex = rec["extrapolation"]
    assert ex["held_out_N"] == 3e6 and ex["fit_N"] == [1e5, 3e5, 1e6]
    assert ex["runs_held_out"] == 24 and ex["rel_err_mean"] < 1e-4 and ex["spearman"] > 0.99
    w_true, v_true = laws.minimise_on_simplex(
        lambda q: laws.additive_predict(truth, 1e8, 1e9, q[None])[0], cons.lo, cons.hi)
    assert np.abs(np.asarray(rec["weights"]) - w_true).max() < 0.02
    assert rec["predicted"] == pytest.approx(v_true, rel=1e-3)
