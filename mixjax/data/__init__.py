"""Data: domain sources, splits, tokenizers, packing, the weighted sampler, eval sets.

Usage (the training loop's view)::

    from mixjax import data

    sources = data.corpus_sources("mixpile-tiny")     # {domain: JsonlSource}, sorted names
    # or: data.DatasetSpec(domains=(data.DomainSpec(name="web", kind="jsonl",
    #                                               path="web.jsonl"), ...)).sources()
    tok = data.tokenizers.get("byte")                 # vocab 264, pad 256, eos 257
    sampler = data.DomainSampler(sources, tokenizer=tok, batch_size=8, seq_len=128,
                                 weights=None,        # uniform; or {domain: w} / vector
                                 mode="multinomial",  # | "stratified" | "per_domain"
                                 lag=1, seed=0)       # uses each domain's train split
    batch = next(sampler)   # {"tokens": i32[8,129], "domain_id": i32[8], "domain_counts": i32[K]}
    sampler.set_weights(new_w, step=0)    # used from batch 0 + lag = 1 on
    state = sampler.get_state()           # JSON-able; sampler.set_state(state) resumes exactly
    evals = data.eval_arrays(sources, tokenizer=tok, seq_len=128, split="validation",
                             num_sequences=16)        # {domain: i32[<=16, 129]}, fixed across runs

Inputs are ``tokens[:, :-1]``, targets ``tokens[:, 1:]``, loss mask
``targets != tok.pad_id``. See docs/data.md.
"""

from mixjax.data import tokenizers
from mixjax.data.composer import MODES, BatchComposer, resolve_weights
from mixjax.data.counts import token_counts
from mixjax.data.eval_sets import eval_arrays, eval_token_counts
from mixjax.data.packing import PackIterDataset, TokenizeChunk, TokenizeDoc, pack_arrays
from mixjax.data.sampler import DomainSampler, make_sampler
from mixjax.data.hf_sources import HFSource, hf_column_sources
from mixjax.data.sources import (ArrayRecordSource, DataError, DomainSource, JsonlSource,
                                 ListSource, TextDirSource, TfdsSource, text_dir_sources)
from mixjax.data.spec import (DatasetSpec, DomainSpec, corpus_sources, jsonl_dir_sources,
                              parquet_dir_sources, resolve_sources)
from mixjax.data.splits import SPLITS, split_indices, split_source, split_sources

__all__ = [
    "ArrayRecordSource", "BatchComposer", "DataError", "DatasetSpec", "DomainSampler", "DomainSource",
    "DomainSpec", "HFSource", "JsonlSource", "hf_column_sources", "parquet_dir_sources", "ListSource", "MODES", "PackIterDataset", "SPLITS", "TextDirSource",
    "TfdsSource", "TokenizeChunk", "TokenizeDoc", "corpus_sources", "eval_arrays", "eval_token_counts",
    "jsonl_dir_sources", "make_sampler", "pack_arrays", "resolve_sources", "resolve_weights",
    "split_indices", "split_source", "split_sources", "text_dir_sources", "token_counts", "tokenizers",
]
