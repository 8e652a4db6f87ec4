"""ColoredMNIST (MNIST-5k), DomainBed's protocol: 20 hparams x 3 trials, 5001 steps, CNN.

Full DomainBed scale (CPU-days); for a CPU-sized run see
experiments/dg_colored_rotated_mnist.py, which overrides steps, widths and hparams.

    mixjax dg sweep configs/dg_colored_mnist.py --set algorithms=[erm,irm,vrex]
"""

from mixjax.dg.config import DatasetConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="colored_mnist", seed=0),
        algorithms=("erm", "irm", "vrex", "groupdro", "coral", "mixup"),
        n_hparams=20,
        n_trials=3,
        test_envs="single",
        steps=5001,
        checkpoint_freq=100,
        output_dir="runs/dg/colored_mnist",
    )
