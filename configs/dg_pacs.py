"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV 2017) from a local
folder in DomainBed's layout: DIR/PACS/{art_painting,cartoon,photo,sketch}/<class>/*.jpg.

    mixjax dg sweep configs/dg_pacs.py --data-dir DIR --set model.pretrained=resnet50.safetensors
    mixjax dg sweep configs/dg_pacs.py --data-dir DIR --set model.featurizer=resnet18 \
        --set model.pretrained=resnet18.safetensors --set data_workers=4 \
        --set steps=1001 --set n_hparams=4 --set algorithms=[erm,coral]

DomainBed's setting: ResNet-50 (torchvision architecture, frozen BatchNorm, ``resnet_dropout``
drawn by the registry), ImageNet weights from a local torchvision state_dict file (docs/dg.md,
"Pretrained ImageNet weights": a 5-line script makes it; without ``model.pretrained`` the network
starts from a random initialisation), 224 px, DomainBed's training augmentation made by a grain
pipeline (``data_workers`` processes), 5001 steps, checkpoints every 300, 20 hparams x 3 trials,
big-image hyperparameter ranges (lr 10^U(-5,-3.5), batch 2^U(3,5.5)). Expected with ImageNet
weights: DomainBed's ERM reaches 85.5 average accuracy (training-domain validation); not run here
(no PACS copy and no weights on this machine, and a ResNet-50 step at 224 px takes seconds on
CPU: an accelerator run). Evaluation images are held in memory (9,991 images at 224 px: 5.6 GB).
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="PACS", kwargs={"image_size": 224}),
        model=ModelConfig(featurizer="resnet50"),
        algorithms=("erm", "coral", "sagnet", "mldg", "rsc", "selfreg"),
        n_hparams=20,
        n_trials=3,
        test_envs="single",
        steps=5001,
        checkpoint_freq=300,
        output_dir="runs/dg/pacs",
    )
