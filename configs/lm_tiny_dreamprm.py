"""DreamPRM-1.5 instance weights (Cao and Xie 2025, arXiv 2509.05542) on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_dreamprm.py --set train.run_dir=runs/tiny_dreamprm
Runtime: 200 steps of three forward+backward passes (as lm_tiny_bilevel): measured
2026-12-05 on the shared 2-core machine under load from other jobs, 4 min 46 s wall, user
91 s CPU (expect about 70 s wall on an idle machine, like lm_tiny_bilevel).
Result (seed 0, one run): test loss_avg 2.658 (code 2.889); the final batch's instance
weights span [0.990, 1.435]. In this packed token stream a row rarely comes back: 54 of the
200 batches held a row seen before (a weight that moved); every other weight only decayed
from 1.0 by the AdamW weight decay. The Instance Table needs a training set that is
revisited (the paper's setting; experiments/dreamprm_evidence.py); the Instance Net
(variant below) generalises across rows instead. One seed: not a comparison with uniform.

Each training sequence gets a learned weight (``mixjax.methods.dreamprm``): the Instance
Table keeps one value per sequence, keyed by the hash of its token row, in ``mix_state``
(checkpointed with the run); the upper level is the validation split of ``grads.target``
(code), the engine the penalty (ScaleBiO) one of ``configs/lm_tiny_bilevel.py``. The logged
``weight/<d>`` are each domain's mean instance weight in the batch, normalised;
``instance_weight_mean/min/max`` and ``L2_gap`` go to metrics.jsonl. w is trained on the
validation sequences, so evaluation uses the test split.

Variants:
    Instance Net (scores each sequence from the model's per-token confidence):
        --set train.objective_hparams.weights=net --set train.objective_hparams.lr_p=1e-3
    the reference's weight range [-1, 3]: --set train.objective_hparams.weight_min=-1.0
The controlled check (does the table down-weight corrupted documents?) is
experiments/dreamprm_evidence.py (docs/selection.md).
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_dreamprm"
    cfg.train.run_dir = "runs/lm_tiny_dreamprm"
    cfg.train.objective = "dreamprm"
    # lr_p: run_table.sh's meta_lr 5e-3 moves a weight by ~5e-3 per visit; a 200-step run
    # visits each sequence a few times at most, so the tiny run uses 0.05.
    cfg.train.objective_hparams = {"weights": "table", "penalty": 10.0, "lr_p": 0.05}
    cfg.grads.target = "code"
    cfg.eval.split = "test"
    return cfg
