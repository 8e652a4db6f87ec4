"""DRRho (mixjax.mixing.drrho): per-sequence DRO weights of the excess loss over a reference
model, against a numpy statement of the rule and through the train step."""

import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import mixing
from mixjax.mixing.drrho import drrho_weights
from test_mixing_behaviour import nine, nine_stratified, reference  # noqa: F401 (fixtures)
from test_train_step import APPLY, CFG, PARAMS, K, T, hand_token_losses, make_batch, run_step


def np_drrho(loss, ref, tau):
    """s_b = n softmax_b((l_b - l_ref,b) / tau) over the finite entries; the rest 1."""
    d = np.asarray(loss, np.float64) - np.asarray(ref, np.float64)
    ok = np.isfinite(d)
    s = np.ones_like(d)
    e = np.exp((d[ok] - d[ok].max()) / tau)
    s[ok] = ok.sum() * e / e.sum()
    return s


def test_weights_match_numpy_and_are_a_mean_one_tilt():
    rng = np.random.default_rng(0)
    for tau in (0.1, 1.0, 5.0):
        loss, ref = rng.uniform(1, 6, 12), rng.uniform(1, 6, 12)
        s = np.asarray(drrho_weights(jnp.asarray(loss), jnp.asarray(ref), tau))
        np.testing.assert_allclose(s, np_drrho(loss, ref, tau), rtol=2e-5)
        assert abs(s.mean() - 1) < 1e-5
        # the larger the excess loss, the larger the weight
        assert np.all(np.diff(s[np.argsort(loss - ref)]) >= -1e-6)
    loss[[2, 5]] = [np.nan, np.inf]
    s = np.asarray(drrho_weights(jnp.asarray(loss), jnp.asarray(ref), 1.0))
    np.testing.assert_allclose(s, np_drrho(loss, ref, 1.0), rtol=2e-5)
    assert s[2] == s[5] == 1.0 and np.isfinite(s).all()
    with pytest.raises(ValueError, match="tau"):
        mixing.build("drrho", {"tau": 0.0}, domains=("a", "b"))


def test_the_step_weights_sequences_by_their_excess_loss_over_the_reference():
    ref_params = T.init(CFG, seed=7)[1]
    batch = make_batch()
    mixer = mixing.build("drrho", {"tau": 0.5}, domains=("a", "b", "c"))
    state, m = run_step(mixer, batch, ref_apply=APPLY, ref_params=ref_params)
    ce, mask = hand_token_losses(PARAMS, batch["tokens"])
    ref_ce, _ = hand_token_losses(ref_params, batch["tokens"])
    s = np_drrho(ce.sum(1) / mask.sum(1), ref_ce.sum(1) / mask.sum(1), 0.5)
    assert not np.allclose(s, 1.0)
    np.testing.assert_allclose(float(m["objective"]),
                               (s[:, None] * ce).sum() / (s[:, None] * mask).sum(), rtol=1e-5)
    ids = np.asarray(batch["domain_id"])
    mass = np.array([s[ids == d].sum() for d in range(K)]) / s.sum()
    np.testing.assert_allclose(np.asarray(state.mix_state["domain_mass"]), mass, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m["weights"]), np.full(K, 1 / K), rtol=1e-6)
    # burn-in: every weight 1 before step burn_in, the rule from then on
    burn = mixing.build("drrho", {"burn_in": 5}, domains=("a", "b", "c"))
    stats = {"sample_loss": jnp.asarray(ce.sum(1) / mask.sum(1)),
             "ref_sample_loss": jnp.asarray(ref_ce.sum(1) / mask.sum(1))}
    stats_ids = {**stats, "domain_id": jnp.asarray(ids)}
    before = burn.update(burn.init(3), stats_ids, jnp.asarray(4))
    after = burn.update(before, stats_ids, jnp.asarray(5))
    assert not bool(before["active"]) and bool(after["active"])
    np.testing.assert_array_equal(np.asarray(burn.example_weights(before, stats)), 1.0)
    np.testing.assert_allclose(np.asarray(burn.example_weights(after, stats)),
                               np_drrho(stats["sample_loss"], stats["ref_sample_loss"], 1.0),
                               rtol=2e-5)


@pytest.mark.slow
def test_drrho_spends_less_on_random_bytes_than_loss_weighting(nine_stratified,  # noqa: F811
                                                              reference):  # noqa: F811
    """Controlled case (tests/test_mixing_behaviour.py's nine domains: mixpile-tiny plus
    uniformly random bytes, 2 rows each per batch, a 300-step reference): the random
    domain's loss is irreducible, so its excess over the reference is ~0 and DRRho gives
    it less than its 1/9 share of the batch's sequence weight, on average over the run;
    weighting by the loss alone (no reference) gives it the most."""
    from mixjax.train import loop
    from test_mixing_behaviour import RANDOM, _stratified, _tiny_config
    root, data = nine_stratified
    cfg = _stratified(_tiny_config(root, "drrho", 100, tau=1.0))
    cfg.train.reference = reference
    res = loop.train(cfg, data=data)
    ms = res.state.mix_state
    mass = np.asarray(ms["mass_sum"]) / float(ms["mass_steps"])
    k = len(mass)
    assert data.domains[-1] == RANDOM and abs(mass.sum() - 1) < 1e-4
    assert mass[-1] < 1 / k, mass
    # the same rule on the loss alone (reference loss 0) would put the most weight there:
    # the random domain has the highest training loss at the end of the run
    import json
    last = [json.loads(x) for x in open(f"{cfg.train.run_dir}/metrics.jsonl")][-1]
    loss = np.asarray([last[f"loss/{d}"] for d in data.domains])
    assert np.argmax(loss) == k - 1, loss
