"""TokenizeChunk frames a chunk in array operations; the stream equals framing doc by doc."""

import numpy as np
import pytest

from mixjax.data import packing
from mixjax.data.tokenizers import ByteTokenizer


def _doc_by_doc(docs, tok, bos):
    b = tok.bos_id if bos else None
    return np.concatenate([packing._frame(packing.tokenize(d, tok), tok.eos_id, b) for d in docs])


@pytest.mark.parametrize("bos", [False, True])
def test_chunk_framing_equals_framing_each_document(bos):
    tok, rng = ByteTokenizer(), np.random.default_rng(0)
    chars = list("ab\u00e9\u4e2d \n")
    for _ in range(200):
        docs = ["".join(rng.choice(chars, size=rng.integers(0, 6)))
                for _ in range(rng.integers(1, 6))]          # empty documents too
        got = packing.TokenizeChunk(tok, bos=bos).map(docs)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _doc_by_doc(docs, tok, bos))
    pre = [np.arange(3), np.arange(0), np.array([7, 300])]   # pre-tokenized: the generic path
    np.testing.assert_array_equal(packing.TokenizeChunk(tok, bos=bos).map(pre),
                                  _doc_by_doc(pre, tok, bos))
