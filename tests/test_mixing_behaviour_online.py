"""Behaviour of Aioli and end-of-training upsampling on mixpile-tiny plus random bytes.

* Aioli: probing the random-bytes domain lowers no validation loss, so its
  column of the estimated mixing law is ~0 and the exponentiated-gradient step
  gives it less than uniform weight (it is not always the lowest: code, whose
  loss falls slowly at this scale, can get less).
* Upsampling ``code`` for the last 25 % of the steps lowers code's validation
  loss against the same run (same seed, same steps) without the final phase.
"""

import json

import numpy as np

from mixjax.train import loop
from test_mixing_behaviour import RANDOM, _tiny_config, nine  # noqa: F401


def test_aioli_moves_weight_away_from_random_bytes(nine):  # noqa: F811
    root, data = nine
    # 9 domains: probes take 1 x 9 x 2 = 18 of each 30-step round
    cfg = _tiny_config(root, "aioli", 60, eta=2.0, update_steps=30, lp_rounds=1, lp_steps=2)
    loop.train(cfg, data=data)
    rows = [json.loads(line) for line in open(f"{cfg.train.run_dir}/weights.jsonl")]
    w = np.array([[r["weights"][d] for d in data.domains] for r in rows])
    # probes train on one-hot mixtures (one_hot_factor 1); the first batch after round 0's
    # probes still has the initial uniform p; the learned p of rounds 0 and 1 are the rest
    k = w.shape[1]
    learned = w[(w.max(axis=1) < 0.999) & ~np.all(np.isclose(w, 1 / k), axis=1)]
    assert len(learned) >= 2
    assert data.domains[-1] == RANDOM
    for p in learned:          # less than uniform weight (code, hard to learn, can be lower)
        assert p[-1] < 1 / k, p
    evals = [json.loads(x) for x in open(f"{cfg.train.run_dir}/eval.jsonl")]
    # round starts and the end of every probe were evaluated (steps 0, 2, ..., 18, 30, ...)
    assert [r["step"] for r in evals][:11] == list(range(0, 20, 2)) + [30]


def _final_code_loss(root, data, name, steps, **hp):
    cfg = _tiny_config(root, name, steps, **hp)
    cfg.mixing.name = "upsample_end" if "factors" in hp else "natural"
    cfg.optim.decay = "constant"
    loop.train(cfg, data=data)
    evals = [json.loads(x) for x in open(f"{cfg.train.run_dir}/eval.jsonl")]
    assert evals[-1]["step"] == steps
    logs = [json.loads(x) for x in open(f"{cfg.train.run_dir}/metrics.jsonl")]
    return evals[-1]["loss/code"], {r["step"]: r for r in logs}


def test_upsampling_code_at_the_end_lowers_code_loss(nine):  # noqa: F811
    root, data = nine
    base, base_log = _final_code_loss(root, data, "plain_natural", 120)
    up, up_log = _final_code_loss(root, data, "upsample_code", 120, base="natural",
                                  factors={"code": 8.0}, fraction=0.25)
    assert up < base, (up, base)
    # The same run until the last 25 %: the same mixture and the same batches (tokens per
    # domain) through step 90 (the update at step 90 sets batch 91's mixture), then code is
    # drawn ~8x as often. Training losses are not compared: the two runs compile different
    # programs (a static mixer vs a schedule), XLA does not promise them the same float
    # rounding, and with its loop emitters a 2e-5 difference at step 40 grew to 1.3e-3 by
    # step 50 through Adam; the data stream is what the schedule must leave unchanged.
    for s in range(10, 91, 10):
        same = {k: v for k, v in base_log[s].items()
                if k.startswith(("count/", "sampling_weight/"))}
        assert len(same) == 2 * len(data.domains), sorted(same)
        assert all(up_log[s][k] == v for k, v in same.items()), s
    for s in range(100, 121, 10):
        assert up_log[s]["sampling_weight/code"] > 3 * base_log[s]["sampling_weight/code"], s
