"""Rank transfer between scales (Spearman, Kendall, regret, bootstrap) and seeds as a swarm axis."""

import jax
import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from mixjax.search import transfer as T


def test_point_estimates_restate_scipy_and_the_regret_by_hand():
    proxy = np.array([[3.0, 3.2], [2.5, 2.7], [2.9, 2.9], [3.5, 3.3]])
    target = np.array([[2.0, 2.2, 2.1], [2.3, 2.1, 2.2], [1.9, 1.8, 2.0], [2.6, 2.4, 2.5]])
    out = T.rank_transfer(proxy, target, boot=200)
    pm, tm = proxy.mean(1), target.mean(1)
    assert out["spearman"] == pytest.approx(spearmanr(pm, tm).statistic)
    assert out["kendall"] == pytest.approx(kendalltau(pm, tm).statistic)
    # the proxy picks mixture 1 (2.6); at target scale mixture 2 is best (1.9) and 1 has 2.2
    assert out["picked"] == 1 and out["best"] == 2
    assert out["regret"] == pytest.approx(2.2 - 1.9)
    lo, hi = out["bootstrap"]["spearman"]
    assert -1.0 <= lo <= hi <= 1.0
    assert out["bootstrap"]["regret"][0] >= 0.0


def test_a_monotone_relation_transfers_exactly_and_a_reversed_one_has_full_regret():
    rng = np.random.default_rng(0)
    proxy = np.sort(rng.uniform(2, 4, 8))[:, None] + np.zeros((1, 2))
    target = 0.5 * proxy[:, :1] + np.zeros((1, 3)) + 1.0
    out = T.rank_transfer(proxy, target, boot=100)
    assert out["spearman"] == 1.0 and out["kendall"] == pytest.approx(1.0)
    assert out["regret"] == 0.0
    assert out["bootstrap"]["spearman"] == pytest.approx([1.0, 1.0], abs=1e-12)
    rev = T.rank_transfer(proxy, target[::-1], boot=0)
    assert rev["spearman"] == -1.0
    assert rev["regret"] == pytest.approx(target.max() - target.min())
    with pytest.raises(ValueError, match=">= 3 mixtures"):
        T.rank_transfer(proxy[:2], target[:2])


def test_seed_rows_layout():
    mix = np.eye(3)
    rows, mi, si = T.seed_rows(mix, 4)
    assert rows.shape == (12, 3) and mi.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert si.tolist() == [0, 1, 2, 3] * 3
    vals = np.arange(12.0)
    np.testing.assert_array_equal(T.by_mixture(vals, mi, 4)[1], [4, 5, 6, 7])


def test_repeats_of_one_mixture_are_different_seeds_and_a_seed_reproduces():
    from mixjax.config import Config
    from mixjax.search import swarm as S
    cfg = Config(name="seed_axis")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.sampler = 16, 8, "stratified"
    cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads = 16, 1, 2
    cfg.train.steps, cfg.train.eval_every = 2, 0
    cfg.eval.num_seqs, cfg.eval.batch_size = 2, 2
    rows, _, _ = T.seed_rows(np.full((1, 8), 1 / 8), 2)
    sw = S.Swarm(cfg, rows)
    assert sw.seeds[0] != sw.seeds[1]
    a, b = sw.init_state_unplaced(), sw.init_state_unplaced()
    leaf_a, leaf_b = jax.tree.leaves(a["proxy"].params)[0], jax.tree.leaves(b["proxy"].params)[0]
    assert not np.array_equal(np.asarray(leaf_a[0]), np.asarray(leaf_a[1]))   # seeds differ
    np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))     # and reproduce
    x, y = next(sw.make_batches()), next(sw.make_batches())
    assert not np.array_equal(x["tokens"][0], x["tokens"][1])
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
