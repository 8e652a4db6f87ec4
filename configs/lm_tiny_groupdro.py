"""GroupDRO (Sagawa et al. 2020) on mixpile-tiny: exponentiated-gradient weights on the loss.

Command:
    mixjax train configs/lm_tiny_groupdro.py --set train.run_dir=runs/tiny_groupdro
Variants:
    --set mixing.hparams.step_size=0.1            # faster weights (reference: 0.01)
    --set mixing.hparams.generalization_adjustment=1.0   # + C / sqrt(n_d tokens)

The batch is drawn with the natural mixture (``mixing.sampling_weights``) and
each token of domain d is weighted by q_d / p_d. Watch ``weights.jsonl``: the
hardest domains (highest loss) gain weight. Same model as lm_tiny_uniform.py
(2 layers, d_model 128, byte vocabulary), about a minute on a laptop CPU.
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_groupdro"
    cfg.train.run_dir = "runs/lm_tiny_groupdro"
    cfg.mixing.name = "groupdro"
    cfg.mixing.hparams = {"step_size": 0.01}      # the reference's robust_step_size
    return cfg
