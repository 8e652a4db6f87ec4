"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV 2017) from a local
folder in DomainBed's layout: DIR/PACS/{art_painting,cartoon,photo,sketch}/<class>/*.jpg.

    mixjax dg sweep configs/dg_pacs.py --data-dir DIR
    mixjax dg sweep configs/dg_pacs.py --data-dir DIR --set dataset.kwargs.image_size=64 \
        --set steps=1001 --set n_hparams=4 --set algorithms=[erm,coral]

DomainBed's protocol values (5001 steps, checkpoints every 300, 20 hparams x 3 trials,
big-image hyperparameter ranges: lr 10^U(-5,-3.5), batch 2^U(3,5.5)). Differences
from DomainBed (docs/dg.md): images are resized to ``image_size`` (default 224) and held in
memory, without DomainBed's training augmentation, and the featuriser is mixjax's small
GroupNorm ResNet trained from scratch, not an ImageNet-pretrained ResNet-50; expect accuracies
well below DomainBed's (ERM 85.5 average) - not run here (no PACS copy on this machine).
Runtime: 9,991 images at 224 px are 5.6 GB in memory; at 64 px about 0.5 GB and a few
CPU-minutes per 1,000 steps per job.
"""

from mixjax.dg.config import DatasetConfig, ModelConfig, SweepConfig


def get_config() -> SweepConfig:
    return SweepConfig(
        dataset=DatasetConfig(name="PACS", kwargs={"image_size": 224}),
        model=ModelConfig(featurizer="resnet", resnet_widths=(32, 64, 128, 256), resnet_blocks=1),
        algorithms=("erm", "coral", "sagnet", "mldg", "rsc", "selfreg"),
        n_hparams=20,
        n_trials=3,
        test_envs="single",
        steps=5001,
        checkpoint_freq=300,
        output_dir="runs/dg/pacs",
    )
