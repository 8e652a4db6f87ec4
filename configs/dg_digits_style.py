"""Digit style shift: handwritten MNIST-5k vs sklearn optdigits vs DejaVu font digits (10 classes).

Leave-one-domain-out selection needs the pair runs, hence test_envs="single+pairs".

    mixjax dg sweep configs/dg_digits_style.py --set steps=1001
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="digits_style", seed=0, kwargs={"num_font_digits": 2000}),
        model=ModelConfig(cnn_widths=(32, 64, 64, 64)),
        algorithms=("erm", "coral", "mixup", "sam"),
        n_hparams=5,
        n_trials=3,
        test_envs="single+pairs",
        steps=2001,
        checkpoint_freq=200,
        output_dir="runs/dg/digits_style",
    )
