"""A tiny in-memory stand-in for the data pipeline (train-core tests only).

Domains are synthetic token languages: domain d emits x_{t+1} = (a_d x_t + c_d)
mod V' with a little noise, so a small model learns them quickly and their
losses differ. The composition of each batch comes from the real
``mixjax.data.BatchComposer`` (weights, lag, modes; :class:`mixjax.data.generated.
GeneratedSampler`), so the loop is exercised against the real set_weights/lag
semantics without reading files.
"""

from __future__ import annotations

import numpy as np

from mixjax.config import Config
from mixjax.data.generated import GeneratedSampler
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


class FakeSampler(GeneratedSampler):
    """The languages of ``domain_sequence`` drawn by the real composer; ``pad_tail`` pads
    the tail of every odd-numbered row of a domain (to test the loss mask)."""

    def __init__(self, domains, *, batch_size, seq_len, weights, mode="multinomial", lag=1,
                 seed=0, pad_tail: bool = False):
        self.pad_tail = pad_tail
        super().__init__(domains, self._rows, batch_size=batch_size, seq_len=seq_len,
                         weights=weights, mode=mode, lag=lag, seed=seed)

    def _rows(self, k, start, n, length):
        rows = np.stack([domain_sequence(k, i, length, self.seed) for i in range(start, start + n)])
        for j, i in enumerate(range(start, start + n)):
            if self.pad_tail and i % 2:
                rows[j, -(1 + i % 5):] = PAD
        return rows


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
