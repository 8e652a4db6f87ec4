"""Token counts per domain (for ``natural`` / ``temperature`` mixtures).

``token_counts(sources, tokenizer)`` counts the tokens of each domain's
``split`` the sampler would see, including one EOS per document (and BOS when
``bos=True``): ``n_d = sum_{x in d} (|t(x)| + 1 [+ 1])``. It reads and
tokenizes every document once, so call it once per run and log the result.
"""

from __future__ import annotations

from typing import Any, Mapping

from mixjax.data import splits as splits_lib
from mixjax.data import tokenizers
from mixjax.data.packing import tokenize
from mixjax.data.sources import as_domain_list


def token_counts(sources: Any, *, tokenizer: Any = "byte", split: str | None = "train",
                 split_seed: int = 0, split_fractions: Mapping[str, float] = splits_lib.DEFAULT_FRACTIONS,
                 bos: bool = False) -> dict[str, int]:
    """``{domain: number of tokens}`` of ``split`` (``None``: all documents)."""
    tok = tokenizers.get(tokenizer) if isinstance(tokenizer, str) else tokenizer
    names, srcs = as_domain_list(sources)
    out = {}
    for name, src in zip(names, srcs):
        if split is not None:
            src = splits_lib.split_source(src, split, seed=split_seed, fractions=split_fractions, domain=name)
        out[name] = sum(len(tokenize(src[i], tok)) + 1 + int(bos) for i in range(len(src)))
    return out
