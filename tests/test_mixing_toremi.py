"""ToReMi (mixjax.mixing.toremi) against a plain-Python statement of the reference trainer's
per-topic weight rule (zxx000728/ToReMi train/trainer.py: compute_loss, adjust_weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing

K = 4


def reference_weights(losses, ids, adjust_every, switch_step, lo=0.1, hi=5.0):
    """Topic weights in effect at each step: the trainer's dict bookkeeping, with a topic
    absent from a window left unchanged (mixjax's documented deviation)."""
    w = {t: 1.0 for t in range(K)}
    acc = {t: 0.0 for t in range(K)}
    cnt = {t: 0 for t in range(K)}
    used = []
    for step, (ls, ds) in enumerate(zip(losses, ids)):
        if step > 0 and step % adjust_every == 0:     # after `step` completed steps
            avg = {t: acc[t] / cnt[t] for t in range(K) if cnt[t] > 0}
            mu = sum(avg.values()) / len(avg)
            for t, lt in avg.items():
                diff = lt - mu
                if step < switch_step:
                    if diff > 0:
                        w[t] = min(w[t] * (1 + diff / mu), hi)
                elif diff > 0:
                    w[t] = max(w[t] * (1 - diff / mu), lo)
                else:
                    w[t] = min(w[t] * (1 + abs(diff / mu)), hi)
            acc = {t: 0.0 for t in range(K)}
            cnt = {t: 0 for t in range(K)}
        used.append([w[t] for t in range(K)])
        for loss, t in zip(ls, ds):                  # compute_loss's per-topic sums
            acc[int(t)] += float(loss)
            cnt[int(t)] += 1
    return np.asarray(used)


def test_topic_weights_match_the_reference_rule_over_both_stages():
    rng = np.random.default_rng(0)
    steps, b = 24, 6
    # topic 3 is hard (high loss) and absent from one window; losses drift down
    ids = rng.integers(0, K, (steps, b))
    ids[8:12][ids[8:12] == 2] = 1
    losses = rng.uniform(2.0, 3.0, (steps, b)) + 1.5 * (ids == 3) - 0.02 * np.arange(steps)[:, None]
    mixer = mixing.build("toremi", {"adjust_every": 4, "switch_step": 12}, domains=list("abcd"))
    state = mixer.init(K)
    update = jax.jit(mixer.update)
    got = []
    for s in range(steps):
        state = update(state, {"sample_loss": jnp.asarray(losses[s], jnp.float32),
                               "domain_id": jnp.asarray(ids[s], jnp.int32)}, jnp.asarray(s))
        got.append(np.asarray(state["topic_weight"]))
        np.testing.assert_allclose(np.asarray(mixer.weights(state)), got[-1] / got[-1].sum(),
                                   rtol=1e-6)
    want = reference_weights(losses, ids, 4, 12)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # both stages acted: topic 3 up early (capped at 5), then down after the switch
    assert want[11, 3] > 1.5 and want[-1, 3] < want[11, 3]
    assert mixer.apply_to == "loss"
    with pytest.raises(ValueError, match="adjust_every"):
        mixing.build("toremi", {"adjust_every": 0}, domains=list("abcd"))
