"""The Method protocol: registry, hyperparameter checks, and the one metrics contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import config as config_lib, methods
from mixjax.train import loop
from train_fakes import fake_data, tiny_config


def test_built_in_methods_register_themselves():
    assert {"mixer", "bilevel", "fish"} <= set(methods.names())
    assert methods.get("mixer").uses_mixer and not methods.get("bilevel").uses_mixer
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.get("nope")


def test_a_name_registered_twice_is_refused():
    class Other(methods.Method):
        name = "bilevel"
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(Other)
    assert type(methods.get("bilevel")).__name__ == "BilevelMethod"


def test_hyperparameters_resolve_and_unknown_ones_are_named():
    assert methods.resolved_hparams("fish", {"meta_lr": 0.1}) == {
        "meta_lr": 0.1, "divide_by_meta_steps": False}
    with pytest.raises(TypeError, match=r"no hyperparameter\(s\) \['lr'\]"):
        methods.resolved_hparams("fish", {"lr": 1.0})


def test_config_validation_uses_the_methods_checks(tmp_path):
    # the run-build checks (mixjax.train.checks, run by `mixjax train` and the loop) ask the
    # Method; config loading itself imports no registry
    from mixjax.train import checks
    cfg = tiny_config(tmp_path, objective="bilevel", objective_hparams={"penalty": -1.0})
    with pytest.raises(config_lib.ConfigError, match="train.objective_hparams.*penalty"):
        checks.check_names(config_lib.validate(cfg))
    cfg = tiny_config(tmp_path, objective="nope")
    with pytest.raises(config_lib.ConfigError, match="unknown method 'nope'.*bilevel"):
        checks.check_names(config_lib.validate(cfg))


@pytest.mark.parametrize("name", ["mixer", "bilevel", "fish"])
def test_every_built_in_step_returns_the_metrics_contract(tmp_path, name):
    cfg = tiny_config(tmp_path, objective=name)
    if name != "mixer":
        cfg.data.sampler = "per_domain"
    if name == "bilevel":
        cfg.grads.target = "a"
    data = fake_data(cfg)
    trainer = loop.Trainer(cfg, data=data)
    k, b, s = len(trainer.domains), cfg.data.batch_size, cfg.data.seq_len + 1
    batch = {"tokens": jax.ShapeDtypeStruct((b, s), jnp.int32),
             "domain_id": jax.ShapeDtypeStruct((b,), jnp.int32),
             "sampling_weights": jax.ShapeDtypeStruct((k,), jnp.float32)}
    if trainer.target_tokens is not None:
        batch["target_tokens"] = jax.ShapeDtypeStruct(np.shape(trainer.target_tokens), jnp.int32)
    _, metrics = jax.eval_shape(trainer.step_fn, trainer.initial_state, batch)
    assert set(methods.METRIC_KEYS) <= set(metrics)
    for key in ("domain_loss", "domain_count", "weights", "sampling_weights"):
        assert metrics[key].shape == (k,) and metrics[key].dtype == jnp.float32, key
    for key in ("loss", "objective", "grad_norm", "tokens", "nonfinite_domain"):
        assert metrics[key].shape == (), key
    assert metrics["nonfinite_domain"].dtype == jnp.int32


def test_step_metrics_defaults_are_the_token_mean():
    m = methods.step_metrics(step=jnp.int32(3), domain_loss=jnp.asarray([1.0, 3.0]),
                             domain_count=jnp.asarray([1.0, 3.0]),
                             weights=jnp.asarray([0.5, 0.5]),
                             sampling_weights=jnp.asarray([0.5, 0.5]),
                             grad_norm=jnp.float32(1.0), nonfinite_domain=jnp.int32(-1))
    assert float(m["loss"]) == pytest.approx(2.5) and float(m["objective"]) == float(m["loss"])
    assert float(m["tokens"]) == 4.0 and "lr" not in m and "extra" not in m
