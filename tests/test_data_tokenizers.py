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


def test_sentencepiece_adapter(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model = tmp_path / "t.model"
    with open(model, "wb") as fh:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([f"the quick brown fox jumps over the lazy dog {i}" for i in range(300)]),
            model_writer=fh, vocab_size=60, model_type="bpe", minloglevel=2)
    tok = tokenizers.get("sentencepiece", model_file=str(model))
    assert tok.pad_id == 60 and tok.vocab_size == 61           # PAD added after the model's pieces
    assert len({tok.pad_id, tok.eos_id, tok.bos_id}) == 3
    ids = tok.encode("the lazy fox 12")
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == "the lazy fox 12"
    assert pickle.loads(pickle.dumps(tok)).encode("the lazy fox 12") == ids
    with pytest.raises(FileNotFoundError, match="model file 'missing.model' not found"):
        tokenizers.get("sentencepiece", model_file="missing.model")


def test_tiktoken_adapter():
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(name="bytes", pat_str=r"\S+|\s+",
                            mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={"<|endoftext|>": 256})
    tok = tokenizers.get("tiktoken", encoding=enc)
    assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.vocab_size) == (256, 257, 258, 259)
    ids = tok.encode("héllo <|endoftext|>")                   # special text is not a special token
    assert tok.eos_id not in ids and tok.decode(ids) == "héllo <|endoftext|>"
    assert pickle.loads(pickle.dumps(tok)).encode("ab") == tok.encode("ab")


def test_tiktoken_unknown_encoding_is_clear():
    pytest.importorskip("tiktoken")
    with pytest.raises(ValueError, match="tokenizer 'tiktoken': cannot load encoding 'no_such_encoding'"):
        tokenizers.get("tiktoken", encoding="no_such_encoding")
