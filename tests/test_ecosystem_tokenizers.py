"""Tokenizers from config: byte / HF tokenizer.json / SentencePiece / tiktoken BPE file,
vocabulary into the model, the tokenized-data cache, and bad-input errors (exit 2)."""

import base64
import json
import pickle

import numpy as np
import pytest

from mixjax import cli
from mixjax import config as config_lib
from mixjax.config import ConfigError
from mixjax.data import tokenizers
from mixjax.train import data as train_data
from mixjax.train import loop

from ecosystem_fixtures import (tiny_lm_config, train_hf_bpe, train_sentencepiece,
                                write_jsonl_corpus)

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eco_tok")
    corpus = write_jsonl_corpus(root / "corpus")
    bpe = train_hf_bpe(root / "tokenizer.json")
    spm = train_sentencepiece(root / "t.model")
    return {"root": root, "corpus": corpus, "bpe": bpe, "spm": spm}


def test_set_data_tokenizer_string_and_section():
    cfg = config_lib.Config()
    config_lib.apply_override(cfg, "data.tokenizer=byte")
    assert cfg.data.tokenizer == config_lib.TokenizerConfig(kind="byte")
    config_lib.apply_override(cfg, "data.tokenizer.kind=hf")
    config_lib.apply_override(cfg, "data.tokenizer.path=tok.json")
    config_lib.apply_override(cfg, "data.tokenizer.args={'eos_token': '</s>'}")
    config_lib.validate(cfg)
    assert (cfg.data.tokenizer.kind, cfg.data.tokenizer.path) == ("hf", "tok.json")
    # config.json round trip, and an old config.json whose tokenizer is a string
    assert config_lib.from_dict(config_lib.to_dict(cfg)).data.tokenizer == cfg.data.tokenizer
    old = config_lib.to_dict(config_lib.Config())
    old["data"]["tokenizer"] = "byte"
    assert config_lib.from_dict(old).data.tokenizer.kind == "byte"
    cfg.data.tokenizer = "sentencepiece"                  # a config file assigning a string
    with pytest.raises(ConfigError, match="data.tokenizer.path.*needs a file"):
        config_lib.validate(cfg)


def test_byte_pipeline_unchanged():
    cfg = config_lib.Config()
    tok, vocab = train_data.build_tokenizer(cfg)
    assert (tok.name, tok.vocab_size, vocab) == ("byte", 264, 264)   # no 128-padding for bytes


def test_hf_tokenizer_from_file_and_dir(assets):
    tok = tokenizers.from_config("hf", str(assets["bpe"]))
    assert tok.eos_id == tok._tok.token_to_id("<|endoftext|>")
    assert tok.pad_id == tok._tok.token_to_id("<pad>")
    assert tok.bos_id == tok.vocab_size - 1            # no BOS token: a new id after the vocabulary
    text = "def return the river sum"
    ids = tok.encode(text)
    assert len(ids) < len(text) and tok.decode(ids + [tok.eos_id]) == text
    np.testing.assert_array_equal(tok.encode_array(text), ids)
    assert pickle.loads(pickle.dumps(tok)).encode(text) == ids
    assert tokenizers.from_config("hf", str(assets["root"])).checksum() == tok.checksum()
    assert tok.vocab_size == 301
    assert tokenizers.model_vocab_size(tok) == 384 and tokenizers.model_vocab_size(tok, 64) == 320
    assert tokenizers.model_vocab_size(tok, 1) == tok.vocab_size


def test_tiktoken_from_local_bpe_file_never_downloads(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"th"] = 256
    ranks[b"the"] = 257
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    tok = tokenizers.from_config("tiktoken", str(path))
    assert tok.eos_id == 258 and tok.vocab_size == 261
    assert tok.encode("the") == [257] and tok.decode(tok.encode("hé the")) == "hé the"
    assert pickle.loads(pickle.dumps(tok)).encode("the") == [257]
    # a named encoding that is not in the local cache: an error, not a download
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    import tiktoken.load as tl
    monkeypatch.setattr(tl, "read_file", lambda p: pytest.fail(f"downloaded {p}"))
    with pytest.raises(tokenizers.TokenizerError, match="allow_download"):
        tokenizers.from_config("tiktoken", args={"encoding": "gpt2"})


def test_train_three_steps_with_sentencepiece_and_cache(assets, tmp_path):
    """(Three steps with the HF tokenizer.json: tests/test_ecosystem_run.py's shared run.)"""
    kind, path = "sentencepiece", assets["spm"]
    cfg = tiny_lm_config(tmp_path / "run", assets["corpus"])
    cache = tmp_path / "cache"
    args = ["train", "-", "--set", f"data.tokenizer.kind={kind}", "--set",
            f"data.tokenizer.path={path}", "--set", f"data.cache_dir={cache}"]
    for o in args[3::2]:
        config_lib.apply_override(cfg, o)
    config_lib.validate(cfg)
    tok, vocab = train_data.build_tokenizer(cfg)
    assert vocab % 128 == 0 and vocab >= tok.vocab_size
    result = loop.train(cfg)
    assert result.steps_done == 3
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["model"]["vocab_size"] == vocab
    assert np.isfinite(result.final_eval["loss_avg"])
    # the second build reads token counts and eval sets from the cache: same arrays
    files = sorted((cache / "tokenized").glob("*.npz"))
    assert len(files) == 2
    first = train_data.build_data(cfg)
    calls = []
    import mixjax.data as data_mod
    orig = data_mod.eval_arrays
    data_mod.eval_arrays = lambda *a, **k: calls.append(1) or orig(*a, **k)
    orig_counts = data_mod.token_counts
    data_mod.token_counts = lambda *a, **k: calls.append(2) or orig_counts(*a, **k)
    try:
        again = train_data.build_data(cfg)
    finally:
        data_mod.eval_arrays, data_mod.token_counts = orig, orig_counts
    assert calls == []                                        # nothing re-tokenized
    assert again.token_counts == first.token_counts
    for d in first.eval_sets:
        np.testing.assert_array_equal(again.eval_sets[d], first.eval_sets[d])
    # an edited source file misses the cache
    f = assets["corpus"] / "code.jsonl"
    f.write_text(f.read_text())
    import os
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    train_data.build_data(cfg)
    assert len(list((cache / "tokenized").glob("*.npz"))) == 4


def _write_cfg(tmp_path, corpus):
    p = tmp_path / "cfg.py"
    p.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom ecosystem_fixtures import tiny_lm_config\n"
        "def get_config():\n    return tiny_lm_config(%r, %r)\n"
        % (str(__import__('pathlib').Path(__file__).parent), str(tmp_path / "run"), str(corpus)))
    return p


@pytest.mark.parametrize("overrides,match", [
    (["data.tokenizer.kind=hf", "data.tokenizer.path=/nonexistent/tok.json"],
     "data.tokenizer.path.*'/nonexistent/tok.json'.*not found"),
    (["data.tokenizer.kind=hf", "data.tokenizer.path=BAD"], "data.tokenizer.path.*does not parse"),
    (["data.tokenizer.kind=sentencepiece", "data.tokenizer.path=BAD"],
     "data.tokenizer.path.*not a SentencePiece model"),
    (["data.tokenizer.kind=hf", "data.tokenizer.path=BPE", "model.vocab_size=64"],
     "model.vocab_size.*64 is smaller than tokenizer 'hf'"),
    (["data.tokenizer=gpt2"], "data.tokenizer.kind.*'gpt2'"),
])
def test_bad_tokenizer_input_exits_2(assets, tmp_path, capsys, overrides, match):
    import re
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    sets = []
    for o in overrides:
        o = o.replace("=BAD", f"={bad}").replace("=BPE", f"={assets['bpe']}")
        sets += ["--set", o]
    code = cli.main(["train", str(_write_cfg(tmp_path, assets["corpus"]))] + sets)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(match, err), err
    assert not (tmp_path / "run").exists()                   # nothing was started
