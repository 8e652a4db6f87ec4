"""Start-up cost of a real tokenizer, with and without the tokenized-data cache.

    .venv/bin/python benchmarks/bench_token_cache.py [--vocab 4000] [--reps 3]

Trains a byte-level BPE ``tokenizer.json`` (HF ``tokenizers``) on mixpile-tiny,
then times ``mixjax.train.data.build_data`` (token counts of the whole
training split + packed eval sets) for a config using it: ``cold`` (empty
cache: tokenizes and writes ``<cache>/tokenized/*.npz``), ``warm`` (reads them
back) and ``off`` (``data.cache_dir=""``), interleaved, medians over
``--reps``. Prints seconds and the cold/warm ratio (the cache's point: a second
run does not re-tokenize; expected well above 10x).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mixjax import config as C
    from mixjax.data.corpus import corpus_dir
    from mixjax.train import data as D

    tmp = tempfile.mkdtemp()
    texts = [json.loads(line)["text"] for f in sorted(corpus_dir("mixpile-tiny").glob("*.jsonl"))
             for line in open(f)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(f"{tmp}/tokenizer.json")
    cfg = C.Config()
    C.apply_override(cfg, "data.tokenizer.kind=hf")
    C.apply_override(cfg, f"data.tokenizer.path={tmp}/tokenizer.json")
    times = {"cold": [], "warm": [], "off": []}
    for _ in range(args.reps):
        for arm in times:
            if arm == "cold":
                shutil.rmtree(f"{tmp}/cache", ignore_errors=True)
            cfg.data.cache_dir = "" if arm == "off" else f"{tmp}/cache"
            C.validate(cfg)
            t0 = time.perf_counter()
            td = D.build_data(cfg)
            times[arm].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"mixpile-tiny, HF BPE vocab {args.vocab} (model vocab {td.vocab_size}), "
          f"{sum(td.token_counts):.0f} train tokens; build_data medians over {args.reps}:")
    for k, v in med.items():
        print(f"  {k:>4}: {v:7.2f} s")
    print(f"  cold/warm = {med['cold'] / med['warm']:.1f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
