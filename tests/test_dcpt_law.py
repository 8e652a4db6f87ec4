"""The D-CPT law: parity with the formula, recovery from generated data, the cross-domain
variant, and the three usages against closed forms and dense grids (numpy/scipy only)."""

import numpy as np
import pytest

from mixjax.search import dcpt_law as dl
from mixjax.search.regmix import FitError

# E, log A, log alpha, log B, eta, log beta, log C, log gamma
TRUE = np.array([1.5, np.log(50), np.log(0.3), np.log(80), 0.5, np.log(0.3), np.log(0.05),
                 np.log(0.5)])
N = np.array([2e6, 8e6, 3.2e7, 1.28e8])
D = np.array([1e7, 1e8, 1e9])
R = np.array([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])


def _design():
    return [a.ravel() for a in np.meshgrid(N, D, R, indexing="ij")]


def test_predict_is_the_paper_formula_restated():
    n, d, r = _design()
    e, a, al, b, eta, be, c, ga = TRUE[0], *np.exp(TRUE[1:4]), TRUE[4], *np.exp(TRUE[5:])
    ref = e + a / n ** al + b * r ** eta / d ** be + c / (r + 0.01) ** ga
    np.testing.assert_allclose(dl.dcpt_predict(TRUE, n, d, r, 0.01), ref, rtol=1e-12)


def test_fit_recovers_the_generating_parameters_under_noise():
    n, d, r = _design()
    y = dl.dcpt_predict(TRUE, n, d, r) * (1 + 1e-3 * np.random.default_rng(0).normal(size=len(n)))
    law = dl.fit_dcpt(n, d, r, y, restarts=6)
    assert law.converged
    got = dict(zip(dl.NAMES, law.params))
    want = dict(zip(dl.NAMES, TRUE))
    assert got["E"] == pytest.approx(want["E"], abs=0.03)
    assert got["eta"] == pytest.approx(want["eta"], abs=0.05)
    for k in ("logalpha", "logbeta", "loggamma"):     # exponents within ~5 %
        assert np.exp(got[k]) == pytest.approx(np.exp(want[k]), rel=0.06), k
    # extrapolation to a 4x larger model and 3x more tokens than any fitted run
    rs = np.linspace(0, 1, 11)
    np.testing.assert_allclose(law.predict(5e8, 3e9, rs), dl.dcpt_predict(TRUE, 5e8, 3e9, rs),
                               rtol=5e-3)


def test_cross_domain_law_recovers_k_and_predicts_a_new_domain_from_few_runs():
    shared = TRUE[1:]
    log_k = {"code": np.log(1 / 1.2), "law": np.log(1 / 1.8), "med": np.log(1 / 2.4)}
    n, d, r = _design()
    rng = np.random.default_rng(1)
    doms, ys = [], []
    for name, lk in log_k.items():
        doms += [name] * len(n)
        ys.append(np.exp(-lk) + dl._terms(shared, n, d, r, 0.01))
    y = np.concatenate(ys) * (1 + 1e-3 * rng.normal(size=3 * len(n)))
    law = dl.fit_cross_domain(doms, np.tile(n, 3), np.tile(d, 3), np.tile(r, 3), y, restarts=4)
    for name, lk in log_k.items():
        assert np.exp(-law.log_k[name]) == pytest.approx(np.exp(-lk), abs=0.03), name
    # a new domain: 4 runs at the smallest size only, K fitted with the rest frozen
    k_new = 1 / 2.0
    nn, dd, rr = np.full(4, 2e6), np.array([1e7, 1e8, 1e8, 1e9]), np.array([.1, .3, .6, 1.])
    yy = 1 / k_new + dl._terms(shared, nn, dd, rr, 0.01)
    new = dl.fit_new_domain(law, "phys", nn, dd, rr, yy)
    assert np.exp(new.log_k["phys"]) == pytest.approx(k_new, rel=0.02)
    rs = np.linspace(0, 1, 5)
    np.testing.assert_allclose(new.predict("phys", 1.28e8, 3e9, rs),
                               1 / k_new + dl._terms(shared, 1.28e8, 3e9, rs, 0.01), rtol=5e-3)


def _law(**kw):
    p = dict(zip(dl.NAMES, TRUE))
    p.update(kw)
    return dl.DCPTLaw(np.array([p[k] for k in dl.NAMES]), 0.01)


def test_usages_match_closed_forms_when_the_d_term_vanishes():
    # without the B term, L(r) = E + A/N^alpha + C/(r+eps)^gamma is decreasing in r:
    # the budget binds and both ratios have closed forms
    g = _law(logB=-200.0)
    dom = _law(logB=-200.0, E=1.9, logC=np.log(0.08))
    n, d = 1e8, 1e9
    base_g = g.params[0] + np.exp(g.params[1] - np.exp(g.params[2]) * np.log(n))
    c, ga = np.exp(g.params[6]), np.exp(g.params[7])
    budget = dl.general_budget(g, n, d, tau=0.1)
    r_g = (c / (budget - base_g)) ** (1 / ga) - 0.01     # L_g(r_g) = budget
    r, l_d = dl.ratio_under_general_budget(g, dom, n, d, budget)
    assert r == pytest.approx(1 - r_g, abs=1e-9)
    assert l_d == pytest.approx(float(dom.predict(n, d, 1 - r_g)), abs=1e-9)
    base_d = dom.params[0] + np.exp(dom.params[1] - np.exp(dom.params[2]) * np.log(n))
    target = float(dom.predict(n, d, 0.4))
    cd, gd = np.exp(dom.params[6]), np.exp(dom.params[7])
    want = (cd / (target - base_d)) ** (1 / gd) - 0.01
    assert dl.ratio_for_domain_loss(dom, n, d, target) == pytest.approx(want, abs=1e-9)
    assert want == pytest.approx(0.4, abs=1e-9)


def test_usages_match_a_dense_grid_on_a_non_monotone_law():
    # eta > 0 and a large B: the domain loss has an interior minimum in r
    g = _law()
    dom = _law(E=1.9, logB=np.log(400), eta=1.0)
    n, d = 2e6, 1e7
    rs = np.linspace(0, 1, 400_001)
    lg, ld = g.predict(n, d, 1 - rs), dom.predict(n, d, rs)
    for budget in (float(lg.min()) + 0.05, float(np.quantile(lg, 0.3)), float(lg.max()) + 1):
        r, val = dl.ratio_under_general_budget(g, dom, n, d, budget)
        brute = float(ld[lg <= budget].min())
        assert float(g.predict(n, d, 1 - r)) <= budget + 1e-12
        # the refinement is at least as good as the grid, and the grid within one step of it
        step = float(np.abs(np.diff(ld)).max())
        assert val <= brute + 1e-12 and val == pytest.approx(brute, abs=step)
    target = float(np.quantile(ld, 0.5))
    r = dl.ratio_for_domain_loss(dom, n, d, target)
    assert r == pytest.approx(rs[np.argmax(ld <= target)], abs=1e-5)
    with pytest.raises(FitError, match="not reached"):
        dl.ratio_for_domain_loss(dom, n, d, float(ld.min()) - 0.01)
    with pytest.raises(FitError, match="general loss"):
        dl.ratio_under_general_budget(g, dom, n, d, float(lg.min()) - 0.01)
    curve = dl.tradeoff_curve(g, dom, n, d, num=41)
    cg, cd, par = (np.array(curve[k]) for k in ("general", "domain", "pareto"))
    for i in range(41):   # plain restatement: i is Pareto iff no j is at least as good on both
        beaten = any(cg[j] <= cg[i] and cd[j] <= cd[i] and (cg[j] < cg[i] or cd[j] < cd[i])
                     for j in range(41))
        assert par[i] == (not beaten)
    assert par.any() and not par.all()


def test_bad_input_names_the_problem():
    n, d, r = _design()
    y = dl.dcpt_predict(TRUE, n, d, r)
    with pytest.raises(FitError, match=r"\[0, 1\]"):
        dl.fit_dcpt(n, d, r + 0.5, y)
    with pytest.raises(FitError, match="needs at least 9 runs"):
        dl.fit_dcpt(n[:5], d[:5], r[:5], y[:5])
