"""RotatedMNIST (MNIST-5k, 0-75 degrees), DomainBed's protocol: 20 hparams x 3 trials, 5001 steps.

    mixjax dg sweep configs/dg_rotated_mnist.py --set algorithms=[erm,coral]
"""

from mixjax.dg.config import DatasetConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="rotated_mnist", seed=0),
        algorithms=("erm", "irm", "vrex", "groupdro", "coral", "mixup"),
        n_hparams=20,
        n_trials=3,
        steps=5001,
        checkpoint_freq=100,
        output_dir="runs/dg/rotated_mnist",
    )
