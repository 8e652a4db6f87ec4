"""A seconds-long sweep on the synthetic debug dataset (tests and smoke checks).

    mixjax dg sweep configs/dg_tiny.py --run-dir /tmp/dg_tiny
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="synthetic", seed=0, kwargs={"shape": [8, 8, 1], "per_env": 40}),
        model=ModelConfig(featurizer="mlp", mlp_width=16),
        algorithms=("erm",),
        n_hparams=2,
        n_trials=2,
        test_envs="single+pairs",
        steps=20,
        checkpoint_freq=10,
        hparam_overrides={"batch_size": 8},
        output_dir="runs/dg/tiny",
    )
