"""Open-set RotatedMNIST (MNIST-5k at 14x14, envs 0/30/60 degrees), MEDIC's DigitsDG class split:
digits 0-5 known, 6-9 unknown (zzwdx/MEDIC ``ml_open.py`` lines 46-50). ERM (scored by its max
softmax probability) vs MEDIC (its OVA score), default hparams, 2 trials, MLP of width 128.

    mixjax dg sweep configs/dg_openset_rotated_mnist.py --run-dir /tmp/os_rm

Runtime: 1 min 49 s - 1 min 57 s wall, 57-58 CPU-s on the shared 2-core machine (groups: erm 27 s, medic 71 s).
Expected (training-domain selection, test env mean over the 3 envs, +/- s.e. over 2 trials):
closed-set acc / AUROC / OSCR = ERM 70.4 +/- 0.3 / 63.1 +/- 0.3 / 49.9 +/- 0.0,
MEDIC 72.6 +/- 0.8 / 66.3 +/- 0.1 / 52.8 +/- 0.6; MEDIC by its max softmax probability (the
extra table columns) AUROC 64.8 +/- 0.1, OSCR 52.5 +/- 0.5 (docs/dg.md, "Open-set DG").
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="rotated_mnist", seed=0, kwargs={"angles": [0, 30, 60], "downsample": 2},
                              open_set_unknown=(6, 7, 8, 9)),
        model=ModelConfig(featurizer="mlp", mlp_width=128),
        algorithms=("erm", "medic"),
        n_hparams=1,
        n_trials=2,
        test_envs="single",
        steps=1501,
        checkpoint_freq=100,
        hparam_overrides={"batch_size": 64},
        output_dir="runs/dg/openset_rotated_mnist",
    )
