"""Bilevel domain reweighting, ScaleBiO-style (Pan et al. 2025, arXiv 2406.19976), on mixpile-tiny.

Command:
    mixjax train configs/lm_tiny_bilevel.py --set train.run_dir=runs/tiny_bilevel
Runtime: 200 steps; the step is three forward+backward passes (u and w on the
training batch, w on the 16-sequence validation batch). Measured on the rebuilt
mixpile-tiny (2026-11-27, idle 2-core machine): 67 s wall (user 94 s); the CLI
test's three 2-3-step runs of a shrunk model take ~20 s together.
One measured run (seed 0): final weights softmax(p) code 0.80, legal 0.13, math
0.03, the rest <= 0.02; test loss on code 2.92, test loss_avg 2.97. One seed
only: not a result about which domains help code.

The train state carries both model copies (``params`` = the upper-level model
w, which is evaluated and checkpointed with its optimiser; ``lower_params`` =
u) and the domain logits p with their Adam state in ``mix_state``; the learned
weights softmax(p) are logged to weights.jsonl / metrics.jsonl
(``weight/<d>``) and ``val_loss``, ``L2_w``, ``L2_u``, ``L2_gap`` to
metrics.jsonl. The validation batch L1 is the validation split of
``grads.target`` (code). w is trained on those validation sequences, so
evaluation uses the *test* split (``eval.split=test``) to stay unseen.

Variants:
    held-out target (code is never in the training mixture, only in L1 and eval):
        --set "data.domains=['conversation','legal','literature','math','news','science','tech_docs']"
    penalty / p learning rate: --set train.objective_hparams.penalty=5
                               --set train.objective_hparams.lr_p=0.05
"""

from configs.lm_tiny_uniform import get_config as tiny_uniform
from mixjax.config import Config


def get_config() -> Config:
    cfg = tiny_uniform()
    cfg.name = "lm_tiny_bilevel"
    cfg.data.sampler = "per_domain"      # every domain in every batch: L2's L_d all defined
    cfg.train.run_dir = "runs/lm_tiny_bilevel"
    cfg.mixing.sampling_weights = "uniform"   # what the sampler logs; per_domain draws B/K each
    cfg.train.objective = "bilevel"
    # penalty a = 10 and lr_p from the reference's run_gpt2.sh; lr_p 0.05 as in
    # experiments/grad_mixers_tiny.py (a 200-step run moves p little at 1e-2).
    cfg.train.objective_hparams = {"penalty": 10.0, "lr_p": 0.05}
    cfg.grads.target = "code"
    cfg.eval.split = "test"
    return cfg
