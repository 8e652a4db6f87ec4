"""Tokenizers: a byte-level default (no download) and optional adapters.

Every tokenizer has ``encode(str) -> list[int]``, ``encode_array(str) ->
int32[n]`` (the fast path the pipeline uses), ``decode(ids) -> str``,
``vocab_size``, ``pad_id``, ``eos_id`` and ``bos_id``. Tokenizers are picklable
so grain worker processes can run them.

Byte tokenizer ids::

    0..255   the UTF-8 bytes of the text
    256      PAD   (never a target: the loss mask is ``targets != pad_id``)
    257      EOS   (separates documents inside a packed sequence)
    258      BOS   (only if a pipeline asks for it)
    vocab_size = 264 (259 rounded up to a multiple of 8 for friendlier matmuls)

``get("sentencepiece", model_file=...)`` and ``get("tiktoken", encoding=...)``
need the optional extra ``pip install 'mixjax[tokenizers]'``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

EXTRA_HINT = "pip install 'mixjax[tokenizers]'"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Tokenizer:
    """Base class: subclasses set the ids and implement ``encode``/``decode``."""

    name: str = ""
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a run log / checkpoint should record about the tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size, "pad_id": self.pad_id,
                "eos_id": self.eos_id, "bos_id": self.bos_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes plus PAD/EOS/BOS (see the module docstring)."""

    name = "byte"

    def __init__(self, vocab_multiple: int = 8):
        self.pad_id, self.eos_id, self.bos_id = 256, 257, 258
        self.vocab_size = _round_up(259, max(1, int(vocab_multiple)))

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return bytes(ids[(ids >= 0) & (ids < 256)].astype(np.uint8)).decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """A local SentencePiece ``.model`` file (no download).

    Missing PAD/EOS/BOS pieces get new ids after the model's vocabulary.
    """

    name = "sentencepiece"

    def __init__(self, model_file: str):
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"tokenizer 'sentencepiece' needs the optional extra: {EXTRA_HINT}") from e
        import os
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"tokenizer 'sentencepiece': model file {model_file!r} not found")
        self.model_file = str(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        n = self._sp.get_piece_size()
        extra = n
        ids = {}
        for key, got in (("pad", self._sp.pad_id()), ("eos", self._sp.eos_id()), ("bos", self._sp.bos_id())):
            if got is None or got < 0:
                got, extra = extra, extra + 1
            ids[key] = int(got)
        self.pad_id, self.eos_id, self.bos_id = ids["pad"], ids["eos"], ids["bos"]
        self.vocab_size = extra
        self._n = n

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)
               if 0 <= i < self._n and i not in (self.pad_id, self.eos_id, self.bos_id)]
        return self._sp.decode(ids)

    def describe(self):
        return {**super().describe(), "model_file": self.model_file}

    def __getstate__(self):
        return {"model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["model_file"])


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding, by name (must be in tiktoken's local cache) or object.

    EOS is the encoding's ``eot_token`` when it has one; PAD (and BOS, EOS if
    missing) get new ids after ``n_vocab``.
    """

    name = "tiktoken"

    def __init__(self, encoding: Any = "gpt2"):
        try:
            import tiktoken
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"tokenizer 'tiktoken' needs the optional extra: {EXTRA_HINT}") from e
        if isinstance(encoding, str):
            try:
                encoding = tiktoken.get_encoding(encoding)
            except Exception as e:   # unknown name, or the BPE file is not cached and cannot be fetched
                raise ValueError(
                    f"tokenizer 'tiktoken': cannot load encoding {encoding!r} ({type(e).__name__}: {e}). "
                    f"tiktoken downloads encodings on first use; offline, point TIKTOKEN_CACHE_DIR at a "
                    f"cache that holds it, or pass a tiktoken.Encoding object") from None
        self._enc = encoding
        n = self._enc.n_vocab
        eot = getattr(self._enc, "eot_token", None)
        self.eos_id = int(eot) if eot is not None else n
        extra = n if eot is not None else n + 1
        self.pad_id, self.bos_id = extra, extra + 1
        self.vocab_size = extra + 2
        self._n = n

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= i < self._n and i != self.eos_id]
        return self._enc.decode(ids)

    def describe(self):
        return {**super().describe(), "encoding": self._enc.name}


_REGISTRY: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "tiktoken": TiktokenTokenizer,
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str = "byte", **kwargs: Any) -> Tokenizer:
    """Builds tokenizer ``name`` (``byte``, ``sentencepiece``, ``tiktoken``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)
