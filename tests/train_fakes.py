"""A tiny in-memory stand-in for the data pipeline (train-core tests only).

Domains are synthetic token languages: domain d emits x_{t+1} = (a_d x_t + c_d)
mod V' with a little noise, so a small model learns them quickly and their
losses differ. The composition of each batch comes from the real
``mixjax.data.BatchComposer`` (weights, lag, modes), so the loop is exercised
against the real set_weights/lag semantics without reading files.
"""

from __future__ import annotations

import numpy as np

from mixjax.config import Config
from mixjax.data.composer import BatchComposer
from mixjax.train.data import TrainData

VOCAB = 32
PAD = 31


def domain_sequence(d: int, index: int, length: int, seed: int = 0, noise: float = 0.1):
    rng = np.random.default_rng([seed, d, index])
    a, c = 2 * d + 3, d + 1
    x = np.empty(length, np.int32)
    x[0] = rng.integers(0, PAD)
    for t in range(1, length):
        x[t] = (a * x[t - 1] + c) % PAD if rng.random() > noise else rng.integers(0, PAD)
    return x


class FakeSampler:
    def __init__(self, domains, *, batch_size, seq_len, weights, mode="multinomial", lag=1,
                 seed=0, pad_tail: bool = False):
        self.domains = tuple(domains)
        self.composer = BatchComposer(self.domains, batch_size=batch_size, weights=weights,
                                      mode=mode, lag=lag, seed=seed)
        self.seq_len, self.seed, self.lag = seq_len, seed, lag
        self.pad_tail = pad_tail
        self.next_index = [0] * len(self.domains)

    def set_weights(self, weights, step):
        self.composer.set_weights(weights, step)

    def weights_for(self, step):
        return self.composer.weights_for(step)

    def __next__(self):
        ids, counts = self.composer.next_ids()
        rows = []
        for d in ids:
            seq = domain_sequence(int(d), self.next_index[d], self.seq_len + 1, self.seed)
            if self.pad_tail and self.next_index[d] % 2:   # some padding to test the mask
                seq[-(1 + self.next_index[d] % 5):] = PAD
            self.next_index[d] += 1
            rows.append(seq)
        return {"tokens": np.stack(rows), "domain_id": ids.astype(np.int32),
                "domain_counts": counts}

    def get_state(self):
        return {"composer": self.composer.get_state(), "next_index": list(self.next_index)}

    def set_state(self, state):
        self.composer.set_state(state["composer"])
        self.next_index = list(state["next_index"])


def fake_data(cfg: Config, domains=("a", "b", "c"), token_counts=(100.0, 300.0, 600.0),
              num_eval: int = 4, pad_tail: bool = False) -> TrainData:
    s = cfg.data.seq_len
    eval_sets = {d: np.stack([domain_sequence(i, 10_000 + j, s + 1, seed=123)
                              for j in range(num_eval)]) for i, d in enumerate(domains)}

    def make_sampler(weights):
        return FakeSampler(domains, batch_size=cfg.data.batch_size, seq_len=s, weights=weights,
                           mode=cfg.data.sampler, lag=cfg.data.lag, seed=cfg.train.seed,
                           pad_tail=pad_tail)

    return TrainData(domains=tuple(domains), token_counts=tuple(token_counts), vocab_size=VOCAB,
                     pad_id=PAD, eval_sets=eval_sets, make_sampler=make_sampler)


def tiny_config(run_dir, **train) -> Config:
    cfg = Config(name="test")
    cfg.data.seq_len = 16
    cfg.data.batch_size = 6
    cfg.model.d_model = 32
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.optim.lr = 1e-2
    cfg.optim.warmup_steps = 2
    cfg.train.steps = 6
    cfg.train.eval_every = 3
    cfg.train.ckpt_every = 3
    cfg.train.progress = False
    cfg.train.run_dir = str(run_dir)
    cfg.eval.num_seqs = 4
    cfg.eval.batch_size = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
