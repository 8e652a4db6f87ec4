"""NICO++ (Zhang et al., "NICO++: Towards Better Benchmarking for Domain Generalization", CVPR 2023,
arXiv 2204.08040), DG track, from a local folder: DIR/NICO++/{autumn,dim,grass,outdoor,rock,water}/
<class>/*.jpg (the challenge's track_1 ``public_dg_0416/train`` folder, 60 classes; ``--data-dir``
may also point at that folder itself). Nothing is downloaded.

    mixjax dg sweep configs/dg_nicopp.py --data-dir DIR --set model.pretrained=resnet50.safetensors
    mixjax dg sweep configs/dg_nicopp.py --data-dir DIR --set model.featurizer=resnet18 \
        --set model.pretrained=resnet18.safetensors --set dataset.kwargs.image_size=64 \
        --set steps=1001 --set n_hparams=4 --set algorithms=[erm,coral]

DomainBed's image-benchmark setting (ResNet-50, frozen BatchNorm, augmentation pipeline, 5001
steps, checkpoints every 300) on the six common contexts as environments (leave-one-context-out).
Evaluation images are held in memory: ~89k images at 112 px need ~12.5 GB (224 px would need 50 GB,
over ``max_gb``), hence ``image_size=112`` here. Not run: no NICO++ copy on this machine (the loader
is tested on a generated folder tree, tests/test_dg_protocols.py); a ResNet-50 sweep is an
accelerator job.
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="NICOpp", kwargs={"image_size": 112}),
        model=ModelConfig(featurizer="resnet50"),
        algorithms=("erm", "coral"),
        n_hparams=20,
        n_trials=3,
        test_envs="single",
        steps=5001,
        checkpoint_freq=300,
        output_dir="runs/dg/nicopp",
    )
