"""Behaviour of the loss-signal mixers on mixpile-tiny with a tiny model.

A ninth domain of uniformly random bytes has nothing to learn: its loss sits
at ln 256 from the start. Each test trains a 1-layer model for a few hundred
steps at most (< 40 s each on 2 cores) and checks the direction the method is
known to move the weights:

* DoReMi: the random domain's excess loss over a reference is ~0, so it gets
  less than uniform weight; tDRO (loss ratio ~1) likewise.
* GroupDRO: the random domain has the highest loss, so it gets the largest weight.
* ODM (EXP3): the reward is the loss, so the random domain is drawn most.
* ADO: between a domain whose loss stopped falling (random bytes) and one still
  learning, weight moves to the one still learning.

They are the issue's required behaviour tests, so they run in CI: all five
take about 70 s on an idle 2-core machine (the 300-step reference is shared).
"""

import json

import numpy as np
import pytest

from mixjax import data as data_lib
from mixjax.config import Config
from mixjax.data.sources import ListSource
from mixjax.train import loop
from mixjax.train.data import TrainData

RANDOM = "random_bytes"


def _tiny_config(run_dir, name, steps, **hparams) -> Config:
    cfg = Config(name=f"behaviour_{name}")
    cfg.data.seq_len = 64
    cfg.data.batch_size = 16
    cfg.model.d_model = 32
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.optim.warmup_steps = 10
    cfg.train.steps = steps
    cfg.train.eval_every = 0
    cfg.train.ckpt_every = 0
    cfg.train.log_every = 10
    cfg.train.progress = False
    cfg.train.run_dir = str(run_dir / name)
    cfg.eval.num_seqs = 2
    cfg.mixing.name = name
    cfg.mixing.hparams = hparams
    return cfg


def _data(cfg: Config, domains=None) -> TrainData:
    """mixpile-tiny (or some of its domains) plus the random-bytes domain."""
    sources = dict(data_lib.corpus_sources("mixpile-tiny"))
    if domains is not None:
        sources = {d: sources[d] for d in domains}
    rng = np.random.default_rng(0)
    sources[RANDOM] = ListSource([rng.integers(0, 256, 1024).astype(np.int32)
                                  for _ in range(180)], domain=RANDOM)
    tok = data_lib.tokenizers.get("byte")
    eval_sets = data_lib.eval_arrays(sources, seq_len=cfg.data.seq_len, split="validation",
                                     num_sequences=cfg.eval.num_seqs, tokenizer=tok)

    def make_sampler(weights):
        return data_lib.DomainSampler(sources, seq_len=cfg.data.seq_len,
                                      batch_size=cfg.data.batch_size, weights=np.asarray(weights),
                                      tokenizer=tok, mode=cfg.data.sampler, lag=cfg.data.lag,
                                      seed=0)

    n = data_lib.token_counts(sources, tokenizer=tok, split="train")
    return TrainData(domains=tuple(sources), token_counts=tuple(float(n[d]) for d in sources),
                     vocab_size=tok.vocab_size, pad_id=tok.pad_id, eval_sets=eval_sets,
                     make_sampler=make_sampler)


def _weights(cfg: Config, domains) -> tuple[np.ndarray, np.ndarray]:
    """(final weights, time-average over the logged weight changes) from weights.jsonl."""
    path = f"{cfg.train.run_dir}/weights.jsonl"
    rows = [json.loads(line) for line in open(path)]
    w = np.array([[r["weights"][d] for d in domains] for r in rows])
    return w[-1], w.mean(axis=0)


@pytest.fixture(scope="module")
def nine(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviour")
    base = _tiny_config(root, "uniform", 1)
    return root, _data(base)


def _stratified(cfg: Config) -> Config:
    """2 rows of each of the 9 domains per batch: no domain is ever absent."""
    cfg.data.batch_size = 18
    cfg.data.sampler = "stratified"
    return cfg


@pytest.fixture(scope="module")
def nine_stratified(nine):
    root, _ = nine
    return root, _data(_stratified(_tiny_config(root, "uniform", 1)))


@pytest.fixture(scope="module")
def reference(nine_stratified):
    # Long enough to predict ~uniform bytes on the random domain; a shorter
    # reference (150 steps) leaves the two models with different English-like
    # byte priors there, and the per-token clipped excess max(l - l_ref, 0) of
    # that disagreement can make DoReMi upweight the random domain.
    root, data = nine_stratified
    cfg = _stratified(_tiny_config(root, "uniform", 300))
    loop.train(cfg, data=data)
    return cfg.train.run_dir


def _train_with_reference(name, nine_stratified, reference, steps, **hp):
    root, data = nine_stratified
    cfg = _stratified(_tiny_config(root, name, steps, **hp))
    cfg.train.reference = reference
    cfg.mixing.sampling_weights = "uniform"          # the DoReMi proxy samples uniformly
    loop.train(cfg, data=data)
    return _weights(cfg, data.domains)


def test_doremi_downweights_random_bytes(nine_stratified, reference):
    # eta 0.1 (the fix users report for noisy, near one-hot weights, doremi
    # issue #5): with 2 sequences per domain per batch, eta 1 makes the
    # weights swing between domains from one step to the next.
    #
    # DoReMi's output is the time average of the weights (Xie et al. 2023, Alg. 1:
    # alpha_bar = mean_t alpha_t), so that is what is checked, and more strictly than
    # before: the random domain gets the lowest average weight of all nine domains.
    # The last iterate is not DoReMi's output and is not checked: on the rebuilt
    # mixpile-tiny the proxy, once it has downweighted the random domain, falls behind
    # the reference there (its loss on random bytes ends ~0.24 nats above the
    # reference's), the clipped excess loss turns positive and the weight climbs back
    # late in the run (final weight 0.149 vs 1/9, average 0.045; docs/mixing.md).
    final, avg = _train_with_reference("doremi", nine_stratified, reference, 150, eta=0.1)
    k = len(final)
    assert nine_stratified[1].domains[-1] == RANDOM
    assert avg[-1] < 1 / k and avg[-1] == avg.min(), (final, avg)


def test_tdro_downweights_random_bytes(nine_stratified, reference):
    final, _ = _train_with_reference("tdro", nine_stratified, reference, 100, step_size=0.5)
    assert final[-1] < 1 / len(final) and final[-1] == final.min(), final


def test_groupdro_upweights_random_bytes(nine):
    root, data = nine
    cfg = _tiny_config(root, "groupdro", 100)
    loop.train(cfg, data=data)
    final, avg = _weights(cfg, data.domains)
    assert np.argmax(final) == len(final) - 1 and np.argmax(avg) == len(avg) - 1, final


def test_odm_favours_the_higher_loss_domain(nine):
    root, data = nine
    cfg = _tiny_config(root, "odm", 150, warmup_steps=20)
    loop.train(cfg, data=data)
    final, _ = _weights(cfg, data.domains)
    assert np.argmax(final) == len(final) - 1 and final[-1] > 1 / len(final), final


def test_ado_moves_weight_to_the_domain_still_learning(tmp_path):
    cfg = _tiny_config(tmp_path, "ado", 200, start_step=60, ignore_steps=10, refit_every=20,
                       record_every=2, history=128, min_fit_points=10)
    data = _data(cfg, domains=("literature",))
    assert data.domains == ("literature", RANDOM)
    prior = np.asarray(data.token_counts) / np.sum(data.token_counts)
    loop.train(cfg, data=data)
    final, _ = _weights(cfg, data.domains)
    assert final[0] > prior[0] + 0.05 and final[1] < prior[1] - 0.05, (prior, final)
