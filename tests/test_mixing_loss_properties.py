"""Properties of every loss-signal mixer: finite simplex weights, NaN policy, jit.

Hypothesis draws extreme statistics (0, huge, +-inf, NaN). Whatever arrives,
the weights stay finite and on the simplex; when a domain's statistics are
non-finite, ``guarded_update`` keeps the previous state and names the first
such domain.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mixjax import mixing
from mixjax.mixing import sample_reweight

K, B, S = 3, 6, 4

MIXERS = {
    "groupdro": {"step_size": 0.5},
    "doremi": {"vocab_size": 256},
    "tdro": {},
    "odm": {"warmup_steps": 0},
    "odm_smoothed": {"warmup_steps": 0},
    "ado": {"start_step": 0, "ignore_steps": 0, "refit_every": 2, "record_every": 1,
            "history": 8, "min_fit_points": 2, "grid_points": 2, "fit_iterations": 3},
}

extreme = st.one_of(
    st.sampled_from([0.0, 1e-30, 1e30, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan]),
    st.floats(0.0, 20.0, width=32))


@functools.lru_cache(maxsize=None)
def _compiled(name):
    m = mixing.get(name, **MIXERS[name])
    return m, jax.jit(lambda s, x, t: mixing.guarded_update(m, s, x, t))


def _stats(token_loss, ref_token_loss, domain_id, mask):
    tl, rl = np.asarray(token_loss, np.float32), np.asarray(ref_token_loss, np.float32)
    oh = np.eye(K)[domain_id]                                            # [B, K]
    tok = oh.T @ mask.sum(1)
    with np.errstate(all="ignore"):
        loss = np.where(tok > 0, (oh.T @ np.where(mask > 0, tl, 0).sum(1)) / np.maximum(tok, 1),
                        0.0).astype(np.float32)
    return {"loss": jnp.asarray(loss), "count": jnp.asarray(tok, jnp.float32),
            "token_loss": jnp.asarray(tl), "ref_token_loss": jnp.asarray(rl),
            "token_mask": jnp.asarray(mask), "domain_id": jnp.asarray(domain_id, jnp.int32),
            "sample_loss": jnp.asarray(tl[:, 0]),
            "sampling_weights": jnp.full((K,), 1.0 / K)}


def _first_bad_domain(name, stats):
    """The domain guarded_update must blame, from the statistics the mixer reads."""
    m = _compiled(name)[0]
    bad = np.zeros(K, bool)
    if "loss" in m.requires:
        bad |= ~np.isfinite(np.asarray(stats["loss"]))
    mask = np.asarray(stats["token_mask"]) > 0
    for key in ("token_loss", "ref_token_loss"):
        if key in m.requires:
            seq_bad = np.any(~np.isfinite(np.asarray(stats[key])) & mask, axis=1)
            for b in np.flatnonzero(seq_bad):
                bad[int(stats["domain_id"][b])] = True
    return int(np.argmax(bad)) if bad.any() else -1


# Derandomized: CI sees the same examples every run; to explore, drop derandomize and raise
# max_examples (200 random examples pass; a random run found the tDRO overflow below).
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(MIXERS)),
       token_loss=st.lists(extreme, min_size=B * S, max_size=B * S),
       ref_scale=st.sampled_from([0.0, 0.5, 1.0, 1e30]),
       domain_id=st.lists(st.integers(0, K - 1), min_size=B, max_size=B),
       steps=st.integers(1, 3))
# Huge but finite token losses whose sequence mean overflows: tDRO's reference-loss norm
# once turned them into NaN weights although no statistic was non-finite.
@example(name="tdro", token_loss=[0.0] * 21 + [3.4e38, 3.4e38, 0.0], ref_scale=1.0,
         domain_id=[0] * 6, steps=1)
@example(name="tdro", token_loss=[0.0] * 21 + [-3.4e38, -3.4e38, 0.0], ref_scale=1.0,
         domain_id=[0] * 6, steps=1)
@example(name="tdro", token_loss=[3.4e38, 3.4e38, -3.4e38, -3.4e38] * 6, ref_scale=1.0,
         domain_id=[0, 1, 2, 0, 1, 2], steps=1)
def test_weights_finite_on_simplex_and_nan_policy(name, token_loss, ref_scale, domain_id, steps):
    m, update = _compiled(name)
    tl = np.asarray(token_loss, np.float32).reshape(B, S)
    with np.errstate(all="ignore"):
        rl = np.where(np.isfinite(tl), tl * np.float32(ref_scale), 1.0).astype(np.float32)
    mask = np.ones((B, S), np.float32)
    mask[:, -1] = 0.0                                      # a padding column
    stats = _stats(tl, rl, np.asarray(domain_id), mask)
    state = m.init(K)
    for t in range(1, steps + 1):
        prev = state
        state = update(state, stats, jnp.int32(t))
        w = np.asarray(m.weights(state), np.float64)
        assert np.all(np.isfinite(w)) and np.all(w >= 0), (name, w)
        assert abs(w.sum() - 1.0) < 1e-5, (name, w)
        avg = np.asarray(m.average(state), np.float64)
        assert np.all(np.isfinite(avg)) and abs(avg.sum() - 1.0) < 1e-5
        culprit = _first_bad_domain(name, stats)
        assert int(state["nonfinite_domain"]) == culprit, (name, culprit)
        if culprit >= 0:                                   # previous state kept
            np.testing.assert_array_equal(state["weights"], prev["weights"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shape=st.sampled_from(sample_reweight.names()),
       losses=st.lists(extreme, min_size=B, max_size=B),
       temperature=st.sampled_from([1e-3, 1.0, 1e3]))
def test_sample_weights_finite_mean_one(shape, losses, temperature):
    rw = sample_reweight.get(shape, temperature=temperature, burn_in=0)
    w = np.asarray(_sample_weights(rw, jnp.asarray(losses, jnp.float32)), np.float64)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert abs(w.mean() - 1.0) < 1e-5
    bad = ~np.isfinite(np.asarray(losses, np.float32))
    np.testing.assert_array_equal(w[bad], 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _sample_weights(rw, losses):
    return rw.sample_weights(losses, 5)
