"""The gradient engine agrees with direct per-domain jax.grad for every strategy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax.mixing import grads

from grad_fakes import V, init_params, make_batch, token_loss_fn  # noqa: E402


def flat(tree):
    return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])


def direct_stats(params, batch, k, target, mask=None):
    gs = grads.direct_domain_grads(token_loss_fn, params, batch, k)
    if mask is not None:
        gs = [jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), g, mask) for g in gs]
        target = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), target, mask)
    m = np.stack([np.asarray(flat(g), np.float64) for g in gs])
    t = np.asarray(flat(target), np.float64)
    return {"gram": m @ m.T, "grad_norm": np.linalg.norm(m, axis=1), "grad_dot": m @ t,
            "target_grad_norm": np.linalg.norm(t)}, gs


CONFIGS = {
    "vmap": grads.GradConfig(strategy="vmap"),
    "vmap-rows": grads.GradConfig(strategy="vmap", layout="rows"),
    "chunked2": grads.GradConfig(strategy="chunked", chunk_size=2),
    "jvp": grads.GradConfig(strategy="jvp"),                     # 4 micro-batches (B = 12)
    "jvp-whole-batch": grads.GradConfig(strategy="jvp", jvp_microbatches=1),
    "jvp-3-micro": grads.GradConfig(strategy="jvp", jvp_microbatches=3),
    "jvp-linearize": grads.GradConfig(strategy="jvp", jvp_mode="linearize"),
}


def run_engine(cfg, params, batch, k, target, needs):
    @jax.jit
    def f(params, batch, target, coeffs):
        out = grads.domain_grads(token_loss_fn, params, batch, num_domains=k, needs=needs,
                                 config=cfg, target=target)
        return out.stats, out.combine(coeffs)
    return f


@pytest.fixture(scope="module")
def setup():
    k = 4
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), k, per_domain=3)
    tgt = make_batch(jax.random.PRNGKey(2), 1, per_domain=5)
    target = grads.target_grad(token_loss_fn, params, {"tokens": tgt["tokens"]})
    coeffs = jnp.asarray([0.1, 0.4, 0.2, 0.3], jnp.float32)
    ref, gs = direct_stats(params, batch, k, target)
    ref_combine = flat(jax.tree.map(lambda *g: sum(c * x for c, x in zip(coeffs, g)), *gs))
    results = {}
    for name, cfg in CONFIGS.items():
        needs = ({"grad_dot", "target_grad_norm"} if name.startswith("jvp")
                 else set(grads.GRAD_STATS))
        stats, comb = run_engine(cfg, params, batch, k, target, needs)(params, batch, target, coeffs)
        results[name] = (jax.device_get(stats), np.asarray(flat(comb)))
    return k, batch, ref, ref_combine, results


@pytest.mark.parametrize("name", list(CONFIGS))
def test_strategy_matches_direct_grad(setup, name):
    k, batch, ref, ref_combine, results = setup
    stats, comb = results[name]
    for key in grads.GRAD_STATS:
        if key in stats:
            np.testing.assert_allclose(stats[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(comb, ref_combine, rtol=1e-4, atol=1e-6)
    loss, _ = grads.domain_loss_vector(token_loss_fn, init_params(jax.random.PRNGKey(0)), batch, k)
    np.testing.assert_allclose(stats["loss"], loss, rtol=1e-5)
    assert stats["grad_norm"].shape == (k,) if "grad_norm" in stats else True
    # The domains' gradients really differ (a test of the test: a bug that mixed
    # domains up could not pass by symmetry).
    assert np.ptp(ref["grad_dot"]) > 1e-2 * np.abs(ref["grad_dot"]).max()


@pytest.mark.parametrize("a,b", list(itertools.combinations(CONFIGS, 2)))
def test_strategies_agree_pairwise(setup, a, b):
    *_, results = setup
    sa, ca = results[a]
    sb, cb = results[b]
    for key in set(sa) & set(sb):
        np.testing.assert_allclose(sa[key], sb[key], rtol=1e-4, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(ca, cb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["vmap", "chunked2", "jvp"])
def test_param_filter_restricts_statistics_not_combine(name):
    k = 4
    params = init_params(jax.random.PRNGKey(3))
    batch = make_batch(jax.random.PRNGKey(4), k, per_domain=2)
    tgt = make_batch(jax.random.PRNGKey(5), 1, per_domain=4)
    target = grads.target_grad(token_loss_fn, params, {"tokens": tgt["tokens"]})
    cfg = grads.GradConfig(strategy=CONFIGS[name].strategy, layout=CONFIGS[name].layout,
                           chunk_size=CONFIGS[name].chunk_size, param_filter=r"\['head'\]")
    mask = grads.param_mask(params, cfg.param_filter)
    assert sorted(jax.tree.leaves(mask)) == [False, False, False, True, True]
    ref, gs = direct_stats(params, batch, k, target, mask=None)
    ref_sub, _ = direct_stats(params, batch, k, target, mask=mask)
    coeffs = jnp.asarray([0.25, 0.25, 0.4, 0.1])
    needs = {"grad_dot"} if name == "jvp" else set(grads.GRAD_STATS)
    stats, comb = run_engine(cfg, params, batch, k, target, needs)(params, batch, target, coeffs)
    for key in stats:
        if key in ref_sub:
            np.testing.assert_allclose(stats[key], ref_sub[key], rtol=1e-4, atol=1e-6, err_msg=key)
    # the subset really changes the numbers
    assert not np.allclose(ref_sub["grad_dot"], ref["grad_dot"], rtol=1e-3)
    full = flat(jax.tree.map(lambda *g: sum(c * x for c, x in zip(coeffs, g)), *gs))
    np.testing.assert_allclose(flat(comb), full, rtol=1e-4, atol=1e-6)


def test_rows_and_jvp_accept_any_composition():
    k = 3
    params = init_params(jax.random.PRNGKey(6))
    batch = make_batch(jax.random.PRNGKey(7), k, counts=[5, 1, 0])   # domain 2 absent
    tgt = make_batch(jax.random.PRNGKey(8), 1, per_domain=3)
    target = grads.target_grad(token_loss_fn, params, {"tokens": tgt["tokens"]})
    ref, _ = direct_stats(params, batch, k, target)
    for name in ("vmap-rows", "jvp"):
        needs = {"grad_dot"} if name == "jvp" else {"grad_dot", "gram"}
        stats, _ = run_engine(CONFIGS[name], params, batch, k, target, needs)(
            params, batch, target, jnp.ones(k) / k)
        np.testing.assert_allclose(stats["grad_dot"], ref["grad_dot"], rtol=1e-4, atol=1e-6)
        assert stats["grad_dot"][2] == 0.0 and stats["count"][2] == 0.0


def test_jvp_refuses_gram_and_norms():
    with pytest.raises(ValueError, match="grads.strategy='jvp' cannot supply"):
        grads.check_request(grads.GradConfig(strategy="jvp"), {"gram", "loss"})
    with pytest.raises(ValueError, match=r"\['grad_norm'\]"):
        grads.check_request(grads.GradConfig(strategy="jvp"), {"grad_norm"}, who="doge")


def test_config_errors_name_the_culprit():
    with pytest.raises(ValueError, match="grads.strategy"):
        grads.GradConfig(strategy="loop")
    with pytest.raises(ValueError, match="not a regex"):
        grads.GradConfig(param_filter="([")
    with pytest.raises(ValueError, match="matches no parameter"):
        grads.param_mask(init_params(jax.random.PRNGKey(0)), "nothing_like_this")
    with pytest.raises(ValueError, match=r"domain 'b' has 1 sequences, needs 2"):
        grads.check_stratified([2, 1, 3], 6, step=7, domains=("a", "b", "c"))
    grads.check_stratified([2, 2, 2], 6)
    params = init_params(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1), 4, per_domain=1)
    with pytest.raises(ValueError, match="chunk_size=3 must divide"):
        grads.domain_grads(token_loss_fn, params, batch, num_domains=4, needs={"grad_norm"},
                           config=grads.GradConfig(strategy="chunked", chunk_size=3))


def test_transformer_last_block_subset_matches_direct_grad():
    """The project's transformer: vmap and jvp agree with direct per-domain grads on the
    last block + final norm (the docs' param_filter example)."""
    from mixjax.models import transformer
    from mixjax.core import step as step_lib
    cfg = transformer.TransformerConfig(vocab_size=V, d_model=16, num_layers=2, num_heads=2)
    apply, params, _ = transformer.init(cfg, 0)

    def tlf(p, b):
        return step_lib.token_losses(apply, p, b["tokens"], pad_id=0)

    k = 2
    batch = make_batch(jax.random.PRNGKey(9), k, per_domain=2)
    tgt = make_batch(jax.random.PRNGKey(10), 1, per_domain=2)
    target = jax.jit(lambda p, t: grads.target_grad(tlf, p, {"tokens": t}))(params, tgt["tokens"])
    pattern = r"\['blocks'\]\[1\]|\['final_norm'\]"
    mask = grads.param_mask(params, pattern)
    assert 0 < sum(jax.tree.leaves(mask)) < len(jax.tree.leaves(mask))
    gs = jax.jit(lambda p, b: grads.direct_domain_grads(tlf, p, b, k))(params, batch)
    sub = lambda t: flat(jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), t, mask))  # noqa
    m = np.stack([np.asarray(sub(g)) for g in gs])
    want_dot = m @ np.asarray(sub(target))
    coeffs = jnp.asarray([0.3, 0.7])
    want_comb = flat(jax.tree.map(lambda a, b: 0.3 * a + 0.7 * b, *gs))
    for strategy, needs in (("vmap", {"grad_dot", "gram"}), ("jvp", {"grad_dot"})):
        cfg_g = grads.GradConfig(strategy=strategy, param_filter=pattern)

        @jax.jit
        def f(params, batch, target):
            out = grads.domain_grads(tlf, params, batch, num_domains=k, needs=needs,
                                     config=cfg_g, target=target)
            return out.stats, out.combine(coeffs)
        stats, comb = f(params, batch, target)
        np.testing.assert_allclose(stats["grad_dot"], want_dot, rtol=1e-4, atol=1e-7)
        if "gram" in stats:
            np.testing.assert_allclose(stats["gram"], m @ m.T, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(flat(comb), want_comb, rtol=1e-4, atol=1e-7)


def test_host_blocked_rows_give_the_device_sorted_layout_and_statistics():
    """Rows grouped by domain on the host (``block_rows``) + ``blocked=True`` reshape to the
    very sub-batches the device-side sort builds, so every statistic is unchanged."""
    k = 4
    batch = make_batch(jax.random.PRNGKey(7), k, per_domain=3)
    order = grads.block_rows(np.asarray(batch["domain_id"]))
    assert np.all(np.diff(np.asarray(batch["domain_id"])[order]) >= 0)
    host = {key: v[order] if key in ("tokens", "domain_id") else v for key, v in batch.items()}
    device = grads.stratify(batch, k)
    blocked = grads.stratify(host, k, blocked=True)
    for key in device:
        np.testing.assert_array_equal(np.asarray(device[key]), np.asarray(blocked[key]), key)
    params = init_params(jax.random.PRNGKey(8))
    needs = {"gram", "grad_norm", "loss", "count"}
    a = jax.jit(lambda p, b: grads.domain_grads(token_loss_fn, p, b, num_domains=k,
                                                needs=needs).stats)(params, batch)
    cfg = grads.GradConfig(blocked=True)
    b = jax.jit(lambda p, b: grads.domain_grads(token_loss_fn, p, b, num_domains=k, needs=needs,
                                                config=cfg).stats)(params, host)
    for key in needs:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), key)
    # unsorted rows with blocked=True would be a different (wrong) grouping: the flag matters
    wrong = grads.stratify(batch, k, blocked=True)
    assert not np.array_equal(np.asarray(wrong["domain_id"]), np.asarray(device["domain_id"]))
