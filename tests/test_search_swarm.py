"""The proxy swarm: data routes, gradients, strategies, NaN isolation, sharding, resume.

Tiny proxies (d_model 16, one layer) on mixpile-tiny (8 domains), 8 rows of 17 tokens:
compilation, not arithmetic, is the cost, so each test compiles one or two swarm steps.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax.config import Config
from mixjax.search import swarm as S
from mixjax.core import step as step_lib


def tiny_cfg(steps=4) -> Config:
    cfg = Config(name="swarm_test")
    cfg.data.corpus = "mixpile-tiny"
    cfg.data.seq_len = 16
    cfg.data.batch_size = 8
    cfg.data.sampler = "stratified"
    cfg.model.d_model = 16
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.train.steps = steps
    cfg.train.eval_every = 0
    cfg.train.ckpt_every = 2
    cfg.eval.num_seqs = 2
    cfg.eval.batch_size = 2
    return cfg


@pytest.fixture(scope="module")
def data():
    from mixjax.train.data import build_data
    return build_data(tiny_cfg())


# A large step makes params - params' well above float32 rounding of the params.
LR = 1e6


def mixtures(p, k=8, seed=0):
    return np.random.default_rng(seed).dirichlet(np.full(k, 0.7), size=p)


def test_upweight_gradient_is_the_hand_weighted_domain_loss_gradient(data):
    """Proxy p's gradient equals grad of sum_d h_p[d] loss_d on the shared batch."""
    h = mixtures(2)
    sw = S.Swarm(tiny_cfg(), h, route="upweight", strategy="vmap", data=data,
                 tx=optax.sgd(LR))                       # params' = params - LR grad
    state = sw.init_state()
    before = jax.tree.map(np.asarray, state["proxy"].params)
    host = next(sw.make_batches())
    counts = np.bincount(host["domain_id"], minlength=8)
    assert counts.tolist() == [1] * 8                    # stratified uniform: B/K rows each
    state, _ = sw.train_step()(state, sw.device_batch(host))
    after = jax.tree.map(np.asarray, state["proxy"].params)
    for p in range(2):
        params = jax.tree.map(lambda x: jnp.asarray(x[p]), before)

        def weighted(prm):
            tl, tm = step_lib.token_losses(sw.apply, prm, jnp.asarray(host["tokens"]),
                                           data.pad_id)
            loss_d, _ = step_lib.domain_sums(tl, tm, jnp.asarray(host["domain_id"]), 8)
            return jnp.sum(jnp.asarray(h[p], jnp.float32) * loss_d)

        want = jax.grad(weighted)(params)
        got = jax.tree.map(lambda b, a: (b[p].astype(np.float64) - a[p]) / LR, before, after)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4,
                                       atol=1e-5 * float(np.abs(w).max()) + 1e-9)


def test_upsample_draws_each_proxy_with_its_mixture_exact_counts(data):
    h = np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0, 0, 0.125, 0.875],
                  [1 / 8] * 8])
    sw = S.Swarm(tiny_cfg(), h, route="upsample", data=data)
    batches = sw.make_batches()
    total = np.zeros((3, 8))
    for t in range(1, 6):
        b = next(batches)
        assert b["tokens"].shape == (3, 8, 17)
        for p in range(3):
            c = np.bincount(b["domain_id"][p], minlength=8)
            assert c.tolist() == b["domain_counts"][p].tolist()
            total[p] += c
        # stratified: cumulative counts within 1 of t * B * h (exact for these h)
        assert np.all(np.abs(total - t * 8 * h) < 1.0 + 1e-9)
    np.testing.assert_array_equal(total, 5 * 8 * h)
    assert np.all(total[:, h[0] == 0][0] == 0)


def test_map_equals_vmap_and_a_diverged_proxy_is_isolated(data):
    h = mixtures(3, seed=1)
    cfg = tiny_cfg()
    runs = {}
    for strategy, poison in (("vmap", False), ("map", False), ("map", True)):
        sw = S.Swarm(cfg, h, route="upsample", strategy=strategy, data=data)
        state = sw.init_state()
        if poison:   # proxy 1 diverges: NaN in one of its parameters
            leaf = jax.tree.leaves(state["proxy"].params)[0]
            bad = leaf.at[1].set(jnp.nan)
            state["proxy"] = state["proxy"].replace(params=jax.tree.unflatten(
                jax.tree.structure(state["proxy"].params),
                [bad] + jax.tree.leaves(state["proxy"].params)[1:]))
        batches, step = sw.make_batches(), sw.train_step()
        for _ in range(2):
            state, m = step(state, sw.device_batch(next(batches)))
        runs[(strategy, poison)] = (jax.tree.map(np.asarray, state), np.asarray(m["loss"]))
    a, b = runs[("vmap", False)][0], runs[("map", False)][0]
    for x, y in zip(jax.tree.leaves(a["proxy"].params), jax.tree.leaves(b["proxy"].params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    poisoned, loss = runs[("map", True)]
    assert poisoned["alive"].tolist() == [True, False, True]
    assert poisoned["died_at"].tolist() == [-1, 0, -1]
    assert int(poisoned["proxy"].step[1]) == 0           # never updated
    assert np.all(np.isfinite(loss[[0, 2]]))
    for x, y in zip(jax.tree.leaves(b["proxy"].params),
                    jax.tree.leaves(poisoned["proxy"].params)):
        np.testing.assert_array_equal(x[[0, 2]], y[[0, 2]])   # the others are untouched


def test_swarm_sharded_over_models_equals_unsharded(data):
    assert len(jax.devices()) >= 8, "conftest sets 8 fake CPU devices"
    h = mixtures(8, seed=2)
    finals = []
    for models in (1, 8):
        sw = S.Swarm(tiny_cfg(), h, route="upsample", strategy="vmap", data=data, models=models)
        state = sw.init_state()
        batches, step = sw.make_batches(), sw.train_step()
        for _ in range(2):
            state, m = step(state, sw.device_batch(next(batches)))
        if models == 8:
            leaf = jax.tree.leaves(state["proxy"].params)[0]
            assert leaf.sharding.spec[0] == "models"
            assert len(leaf.sharding.device_set) == 8
        finals.append((jax.tree.map(np.asarray, state), sw.evaluate(state)))
    (a, ea), (b, eb) = finals
    for x, y in zip(jax.tree.leaves(a["proxy"]), jax.tree.leaves(b["proxy"])):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= 1e-5 * max(np.linalg.norm(x), 1e-12)
    np.testing.assert_allclose(ea, eb, rtol=1e-5)


def test_swarm_resume_is_exact(data, tmp_path):
    h = mixtures(2, seed=3)
    sw = S.Swarm(tiny_cfg(steps=4), h, route="upsample", strategy="map", data=data)
    straight = S.train_swarm(sw, tmp_path / "a")
    part = S.train_swarm(sw, tmp_path / "b", stop_after=2)
    assert part.steps == 2
    info = json.loads((tmp_path / "b" / "run_info.json").read_text())   # what produced it
    assert info["kind"] == "swarm" and info["proxies"] == 2 and info["libraries"]["jax"]
    resumed = S.train_swarm(sw, tmp_path / "b")
    assert resumed.steps == 4
    for x, y in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(straight.losses, resumed.losses)


def test_bad_mixtures_and_mesh_are_refused(data):
    with pytest.raises(S.SwarmError, match="mixtures must be"):
        S.Swarm(tiny_cfg(), np.ones((2, 3)) / 3, data=data)
    with pytest.raises(S.SwarmError, match="proxy 1"):
        S.Swarm(tiny_cfg(), np.array([[1.0] + [0] * 7, [0.5] * 8]), data=data)
    with pytest.raises(S.SwarmError, match="does not divide"):
        S.Swarm(tiny_cfg(), mixtures(3), data=data, models=2)


@pytest.mark.parametrize("strategy,route,axes", [
    ("vmap", "upsample", {"models": 4, "data_shards": 2}),
    ("map", "upweight", {"models": 2, "fsdp": 2, "data_shards": 2}),
])
def test_swarm_on_models_x_data_fsdp_mesh_equals_unsharded(data, strategy, route, axes):
    """Proxies over ``models``, each proxy's batch over ``data``/``fsdp`` and its
    parameters over ``fsdp``: the same states and eval losses as one device."""
    h = mixtures(8, seed=4)
    cfg = tiny_cfg()
    finals = []
    for kw in ({}, axes):
        sw = S.Swarm(cfg, h, route=route, strategy=strategy, data=data, **kw)
        state = sw.init_state()
        batches, step = sw.make_batches(), sw.train_step()
        for _ in range(2):
            state, m = step(state, sw.device_batch(next(batches)))
        if kw:
            mesh = sw.mesh.shape
            assert (mesh["models"], mesh["data"], mesh["fsdp"]) == (
                axes["models"], axes.get("data_shards", 1), axes.get("fsdp", 1))
            embed = state["proxy"].params["embed"]          # [P, V, d_model]
            assert embed.sharding.spec[0] == "models"
            if axes.get("fsdp", 1) > 1:                        # d_model split over fsdp
                assert embed.sharding.spec[2] == "fsdp"
                assert embed.addressable_shards[0].data.shape[2] == embed.shape[2] // 2
            batch = sw.device_batch(next(batches))
            rows = batch["tokens"].addressable_shards[0].data.shape[-2]
            assert rows == cfg.data.batch_size // (axes.get("data_shards", 1)
                                                   * axes.get("fsdp", 1))
        finals.append((jax.tree.map(np.asarray, state), sw.evaluate(state), np.asarray(m["loss"])))
    (a, ea, la), (b, eb, lb) = finals
    for x, y in zip(jax.tree.leaves(a["proxy"]), jax.tree.leaves(b["proxy"])):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= 1e-5 * max(np.linalg.norm(x), 1e-12)
    np.testing.assert_allclose(ea, eb, rtol=1e-5)
    np.testing.assert_allclose(la, lb, rtol=1e-5)


def test_swarm_mesh_that_does_not_fit_is_refused(data):
    with pytest.raises(S.SwarmError, match="does not divide the proxies' batch"):
        S.Swarm(tiny_cfg(), mixtures(4), data=data, models=2, data_shards=3)
    with pytest.raises(S.SwarmError, match="needs 16 devices"):
        S.Swarm(tiny_cfg(), mixtures(4), data=data, models=4, data_shards=2, fsdp=2)


def synthetic_batches(h, vocab: int, steps: int, batch: int = 8, seq: int = 17, seed: int = 0):
    """Upsample-route host batches [P, B, S+1] of random tokens (the same on every process)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield {"tokens": rng.integers(1, vocab, (len(h), batch, seq)).astype(np.int32),
               "domain_id": rng.integers(0, h.shape[1], (len(h), batch)).astype(np.int32),
               "sampling_weights": np.asarray(h, np.float32)}


@pytest.mark.parametrize("shape,strategy,route", [
    # proxy shapes outside the set the estimate's constants were fitted on
    ({"d_model": 48, "num_layers": 2, "num_heads": 3, "seq_len": 48, "batch": 8}, "vmap",
     "upsample"),
    ({"d_model": 24, "num_layers": 3, "num_heads": 2, "seq_len": 24, "batch": 12,
      "mlp": "gelu"}, "map", "upweight"),
])
def test_memory_estimate_agrees_with_xla_memory_analysis(data, shape, strategy, route,
                                                      xla_optimised):
    """The config-only estimate is within 20% of XLA's compiled memory analysis
    (arguments + outputs - aliased + temporaries) of the same swarm step."""
    cfg = tiny_cfg()
    cfg.model.d_model, cfg.model.num_layers = shape["d_model"], shape["num_layers"]
    cfg.model.num_heads, cfg.model.mlp = shape["num_heads"], shape.get("mlp", "swiglu")
    cfg.data.seq_len, cfg.data.batch_size = shape["seq_len"], shape["batch"]
    sw = S.Swarm(cfg, mixtures(3), route=route, strategy=strategy, data=data)
    est = sw.memory_estimate()["total"]
    xla = S.compiled_memory_bytes(sw)
    assert 0.8 <= est / xla <= 1.2, f"estimate {est} B vs XLA {xla} B: ratio {est / xla:.3f}"


@pytest.mark.parametrize("mode", ["stratified", "multinomial"])
def test_upsample_one_read_for_all_proxies_equals_one_read_per_proxy(data, mode):
    """The upsample route reads every proxy's rows at once; the rows and the pipelines'
    states after are those of reading proxy by proxy (the swarm's stream is unchanged)."""
    h = np.array([[0.5, 0.25, 0.25, 0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0, 0, 0.125, 0.875],
                  [1 / 8] * 8, [0.3, 0, 0.1, 0.1, 0, 0.2, 0.2, 0.1]])
    sw = S.Swarm(tiny_cfg(), h, route="upsample", data=data)
    fast, slow = sw.make_batches(mode), sw.make_batches(mode)
    for _ in range(4):
        got = next(fast)
        ids = np.stack([c.next_ids()[0] for c in slow.composers])
        want = np.stack([slow.sampler.read_rows(i) for i in ids])
        np.testing.assert_array_equal(got["domain_id"], ids)
        np.testing.assert_array_equal(got["tokens"], want)
    assert fast.get_state() == slow.get_state()
