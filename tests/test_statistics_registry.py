"""The registry of statistics (mixjax.mixing.statistics) and the one per-domain reduction.

A statistic declared by a fork's own module is computed by the train step for a
mixer that requires it and guarded like the built-in ones; the model-gradient
contract is an explicit field.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import config as config_lib, mixing
from mixjax.mixing import domain_stats, grads, statistics
from mixjax.core import state as state_lib
from mixjax.core import step as step_lib

K, B, S, V = 3, 6, 8, 11

# A fork's new signal, declared once: each domain's mean squared token loss.
statistics.declare(
    "test_sq_loss", shape="f32[K]", attribution="domain", needs={"forward"},
    doc="mean squared token loss per domain (test)",
    compute=lambda ctx: domain_stats.domain_mean(ctx.token_loss ** 2, ctx.token_mask,
                                                 ctx.domain_id, ctx.num_domains)[0])


@dataclasses.dataclass(frozen=True, kw_only=True)
class SqLossRecorder(mixing.Mixer):
    """Weights = softmax of the new statistic; stores it to check what the step gave."""

    name = "_test_sq_loss"
    requires = frozenset({"test_sq_loss"})

    def init(self, num_domains):
        return mixing.init_state(jnp.full((num_domains,), 1.0 / num_domains),
                                 seen=jnp.zeros((num_domains,), jnp.float32))

    def update(self, state, stats, step):
        return mixing.record_weights(state, jax.nn.softmax(stats["test_sq_loss"]),
                                     seen=stats["test_sq_loss"])


def _apply(params, x):
    return params["emb"][x] @ params["out"]


def _setup(mixer, tokens=None):
    key = jax.random.PRNGKey(0)
    params = {"emb": jax.random.normal(key, (V, 4)) * 0.3,
              "out": jax.random.normal(jax.random.fold_in(key, 1), (4, V)) * 0.3}
    if tokens is None:
        tokens = jax.random.randint(jax.random.fold_in(key, 2), (B, S + 1), 0, V - 1)
        tokens = tokens.at[0, -3:].set(V - 1)          # some padding
    batch = {"tokens": tokens, "domain_id": jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32),
             "sampling_weights": jnp.full((K,), 1.0 / K)}
    tx, _ = state_lib.make_optimizer(config_lib.OptimConfig(lr=1e-2, warmup_steps=0), 10)
    step = step_lib.make_train_step(apply=_apply, mixer=mixer, tx=tx, num_domains=K,
                                    pad_id=V - 1, jit=False)
    return step, state_lib.init_state(params, tx, mixer, K, 0), batch, params


def test_fork_statistic_is_computed_by_the_step():
    mixer = SqLossRecorder()
    step, state, batch, params = _setup(mixer)
    _, m = step(state, batch)
    tl, tm = step_lib.token_losses(_apply, params, batch["tokens"], V - 1)
    tl, tm, ids = np.asarray(tl), np.asarray(tm), np.asarray(batch["domain_id"])
    want = [(tl[ids == d] ** 2 * tm[ids == d]).sum() / tm[ids == d].sum() for d in range(K)]
    np.testing.assert_allclose(np.asarray(m["weights"]), np.asarray(jax.nn.softmax(
        jnp.asarray(want, jnp.float32))), rtol=1e-5)
    assert "test_sq_loss" in mixing.STATS            # the live table shows it
    assert statistics.needs_of(mixer.requires) == {"forward"}


def test_guard_blames_the_domain_by_attribution():
    mixer = SqLossRecorder()
    state = mixer.init(K)
    stats = {"test_sq_loss": jnp.asarray([1.0, jnp.nan, 2.0])}
    new = mixing.guarded_update(mixer, state, stats, jnp.asarray(0))
    assert int(new["nonfinite_domain"]) == 1
    np.testing.assert_array_equal(np.asarray(new["weights"]), np.asarray(state["weights"]))
    # sequence attribution: a NaN at a counted token of sequence 4 (domain 1) blames domain 1;
    # a NaN at a padding position blames nobody.
    ids = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    mask = jnp.ones((B, S)).at[0, -1].set(0.0)
    tl = jnp.ones((B, S)).at[0, -1].set(jnp.nan)
    bad = statistics.nonfinite_domains({"token_loss"}, {"token_loss": tl, "token_mask": mask,
                                                        "domain_id": ids}, K)
    assert not bool(bad.any())
    bad = statistics.nonfinite_domains({"token_loss"}, {"token_loss": tl.at[4, 2].set(jnp.inf),
                                                        "token_mask": mask, "domain_id": ids}, K)
    np.testing.assert_array_equal(np.asarray(bad), [False, True, False])


def test_every_builtin_requirement_is_declared_and_needs_are_consistent():
    for name in mixing.names():
        cls = mixing.mixer_class(name)
        req = cls.requires if isinstance(cls.requires, frozenset) else None
        if req is not None:
            statistics.check_known(req, name)
    assert statistics.needing("gradient_engine") == set(grads.GRAD_STATS)
    assert statistics.needing("reference") == {"ref_loss", "ref_token_loss", "ref_sample_loss"}
    assert "target_batch" in statistics.needs_of({"grad_dot"})
    assert "target_batch" not in statistics.needs_of({"gram", "grad_norm"})
    assert "target_batch" in statistics.needs_of(mixing.get("doge", target="ood").requires)
    assert "target_batch" not in statistics.needs_of(mixing.get("doge").requires)


def test_declaration_errors_are_clear():
    with pytest.raises(ValueError, match="declared twice"):
        statistics.declare("loss", shape="f32[K]", attribution="domain", doc="x",
                           compute=lambda ctx: ctx.domain_loss)
    with pytest.raises(ValueError, match="attribution"):
        statistics.declare("_x", shape="f32[K]", attribution="rows", doc="x", compute=id)
    with pytest.raises(ValueError, match="unknown needs"):
        statistics.declare("_y", shape="f32[K]", attribution="domain", needs={"gpu"},
                           doc="x", compute=id)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Unknown(mixing.Mixer):
        name = "_test_unknown_stat"
        requires = frozenset({"no_such_statistic"})

    with pytest.raises(ValueError, match="no_such_statistic"):
        _setup(Unknown())


def test_model_gradient_is_an_explicit_field():
    assert mixing.get("uniform").model_gradient == "loss"
    assert mixing.get("doge").model_gradient == "coeffs"
    assert mixing.get("pcgrad").model_gradient == "coeffs"
    # a wrapper inherits its base mixer's contract
    assert mixing.build("upsample_end", {"base": "doge", "factors": {"a": 2.0}},
                        domains=("a", "b"), total_steps=10).model_gradient == "coeffs"
    assert mixing.build("upsample_end", {"base": "uniform", "factors": {"a": 2.0}},
                        domains=("a", "b"), total_steps=10).model_gradient == "loss"
    with pytest.raises(TypeError, match="model_gradient = 'coeffs'"):
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Forgot(mixing.Mixer):   # noqa: F841  (the duck-typed hook of before)
            name = "_test_forgot"
            requires = frozenset({"gram", "count"})

            def gradient_coeffs(self, state, stats):
                return stats["count"]
    with pytest.raises(TypeError, match="model_gradient must be one of"):
        class Bad(mixing.Mixer):   # noqa: F841
            model_gradient = "grads"


def test_domain_totals_is_the_masked_segment_sum_and_ignores_padding_nans():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(B, S)).astype(np.float32)
    m = (rng.random((B, S)) > 0.3).astype(np.float32)
    ids = np.asarray([0, 2, 2, 0, 2, 0], np.int32)           # domain 1 absent
    v_nan = np.where(m > 0, v, np.nan)
    total, count = domain_stats.domain_totals(jnp.asarray(v_nan), jnp.asarray(m),
                                              jnp.asarray(ids), K)
    want_t = [(v * m)[ids == d].sum() for d in range(K)]
    want_c = [m[ids == d].sum() for d in range(K)]
    np.testing.assert_allclose(np.asarray(total), want_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(count), want_c)
    mean, _ = domain_stats.domain_mean(jnp.asarray(v_nan), jnp.asarray(m), jnp.asarray(ids), K)
    assert float(mean[1]) == 0.0 and np.all(np.isfinite(np.asarray(mean)))
