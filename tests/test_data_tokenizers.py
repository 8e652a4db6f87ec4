import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixjax.data import tokenizers


def test_byte_ids_and_vocab():
    tok = tokenizers.get("byte")
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (256, 257, 258)
    assert tok.vocab_size == 264 and tok.vocab_size % 8 == 0
    assert tokenizers.get("byte", vocab_multiple=1).vocab_size == 259
    assert tok.encode("aé") == [97, 0xC3, 0xA9]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip(text):
    tok = tokenizers.get("byte")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode_array(text), np.asarray(ids, np.int32))
    assert all(0 <= i < 256 for i in ids)


def test_byte_decode_drops_specials_and_pickles():
    tok = tokenizers.get("byte")
    assert tok.decode([104, 105, tok.eos_id, tok.pad_id, 33]) == "hi!"
    assert pickle.loads(pickle.dumps(tok)).encode("x") == [120]


def test_unknown_tokenizer():
    with pytest.raises(KeyError, match="unknown tokenizer 'bpe'.*byte"):
        tokenizers.get("bpe")


@pytest.mark.parametrize("name,kw,module", [("sentencepiece", {"model_file": "x.model"}, "sentencepiece"),
                                            ("tiktoken", {"encoding": "gpt2"}, "tiktoken")])
def test_missing_extra_names_it(monkeypatch, name, kw, module):
    monkeypatch.setitem(sys.modules, module, None)   # import fails as if not installed
    with pytest.raises(ImportError, match=r"mixjax\[tokenizers\]"):
        tokenizers.get(name, **kw)
