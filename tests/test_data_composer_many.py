"""next_ids_many (the swarm's draw for all proxies at once) equals one next_ids per composer."""

import numpy as np
import pytest

from mixjax.data.composer import BatchComposer, next_ids_many


def _composers(mode, weights, b, seeds):
    return [BatchComposer(tuple("abcdef"), batch_size=b, weights=w, mode=mode, seed=s, lag=1)
            for w, s in zip(weights, seeds)]


@pytest.mark.parametrize("mode", ["stratified", "multinomial", "per_domain"])
@pytest.mark.parametrize("b", [6, 7, 64])
def test_next_ids_many_equals_next_ids_one_by_one(mode, b):
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.full(6, 0.3), size=40)
    w[:10, :2] = 0.0                     # absent domains
    w[10] = [0, 0, 0, 0, 0, 1.0]
    w[11] = 1 / 6                        # ties
    w /= w.sum(1, keepdims=True)
    if mode == "per_domain":
        b = 6 * (b // 6 or 1)
    many, one = _composers(mode, w, b, range(40)), _composers(mode, w, b, range(40))
    for t in range(25):
        if t % 6 == 5:                   # weights change; some drop a domain (remainder dropped)
            new = rng.dirichlet(np.full(6, 0.5), size=40)
            new[rng.random((40, 6)) < 0.2] = 0.0
            new[new.sum(1) == 0, 0] = 1.0
            new /= new.sum(1, keepdims=True)
            for a, c, x in zip(many, one, new):
                a.set_weights(x, step=t - 1)
                c.set_weights(x, step=t - 1)
        ids, counts = next_ids_many(many)
        want = [c.next_ids() for c in one]
        np.testing.assert_array_equal(ids, np.stack([i for i, _ in want]))
        np.testing.assert_array_equal(counts, np.stack([n for _, n in want]))
        assert ids.dtype == np.int32 and counts.dtype == np.int32
    assert [a.get_state() for a in many] == [c.get_state() for c in one]


def test_next_ids_many_surplus_after_a_dropped_remainder_takes_the_loop():
    """A remainder dropped with its domain can leave sum(floor(target)) > B: the loop's case."""
    many, one = (_composers("stratified", [[0.5, 0.5, 0, 0, 0, 0]] * 3, 4, [1, 2, 3])
                 for _ in range(2))
    for cs in (many, one):
        # a surplus (floor sums to 5 > 4), a negative target, an ordinary remainder
        for c, r in zip(cs, ([1.5, 0.6], [-2.5, 0.5], [0.25, -0.25])):
            c._remainder = np.array(r + [0, 0, 0, 0])
    ids, counts = next_ids_many(many)
    want = [c.next_ids() for c in one]
    np.testing.assert_array_equal(ids, np.stack([i for i, _ in want]))
    assert [a.get_state() for a in many] == [c.get_state() for c in one]
