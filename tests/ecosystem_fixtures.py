"""Shared helpers for the ecosystem tests: tiny corpora, tokenizers trained at test time, configs."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mixjax.config import Config

WORDS = {
    "prose": "the a river stone light quiet morning garden window letter".split(),
    "code": "def return import class self none true false lambda yield".split(),
    "math": "sum prime integral matrix vector proof lemma zero one two".split(),
}


def documents(domain: str, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng([seed, len(domain)])
    words = WORDS[domain]
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 60)))) for _ in range(n)]


def write_jsonl_corpus(root: pathlib.Path, n: int = 40) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for d in WORDS:
        with open(root / f"{d}.jsonl", "w") as fh:
            for i, t in enumerate(documents(d, n)):
                fh.write(json.dumps({"id": f"{d}-{i}", "text": t}) + "\n")
    return root


def all_text(n: int = 40) -> list[str]:
    return [t for d in WORDS for t in documents(d, n)]


def train_hf_bpe(path: pathlib.Path, vocab_size: int = 300) -> pathlib.Path:
    """A byte-level BPE ``tokenizer.json`` trained on the test corpus (well under a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(all_text(), trainer)
    tok.save(str(path))
    return path


def train_sentencepiece(path: pathlib.Path, vocab_size: int = 80) -> pathlib.Path:
    import sentencepiece as spm
    with open(path, "wb") as fh:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(all_text()), model_writer=fh,
                                       vocab_size=vocab_size, model_type="bpe", minloglevel=2)
    return path


def tiny_lm_config(run_dir, corpus, steps: int = 3) -> Config:
    cfg = Config(name="eco")
    cfg.data.corpus = str(corpus)
    cfg.data.seq_len = 16
    cfg.data.batch_size = 4
    cfg.model.d_model = 32
    cfg.model.num_layers = 1
    cfg.model.num_heads = 2
    cfg.train.steps = steps
    cfg.train.eval_every = 0
    cfg.train.ckpt_every = 0
    cfg.train.progress = False
    cfg.train.run_dir = str(run_dir)
    cfg.eval.num_seqs = 2
    cfg.optim.warmup_steps = 1
    return cfg
