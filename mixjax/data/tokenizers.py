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
need the optional extra ``pip install 'mixjax[tokenizers]'``; ``get("hf",
path=...)`` (a ``tokenizer.json`` or a directory holding one, read with the
Hugging Face ``tokenizers`` library) needs ``pip install 'mixjax[hf]'``.

:func:`from_config` builds one from the config's ``data.tokenizer`` section
(``kind``, ``path``, ``args``). Nothing is ever downloaded unless
``allow_download=True`` is among the args (tiktoken encodings by name).
``vocab_size`` is the number of ids the tokenizer can emit (specials
included); the model's embedding is that rounded up by :func:`model_vocab_size`.
:meth:`Tokenizer.checksum` identifies the tokenizer (its kind, its file's bytes
and its special ids): caches of tokenized data are keyed by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any, Callable, Sequence

import numpy as np

EXTRA_HINT = "pip install 'mixjax[tokenizers]'"
HF_EXTRA_HINT = "pip install 'mixjax[hf]'"
DEFAULT_VOCAB_MULTIPLE = 128    # embedding rows rounded up to this for real tokenizers


class TokenizerError(ValueError):
    """A tokenizer file is missing or does not parse, or its arguments are wrong."""


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

    def _identity(self) -> bytes:
        """Bytes that determine the token ids (the tokenizer file's contents)."""
        return b""

    def checksum(self) -> str:
        """sha256 of the kind, the ids and :meth:`_identity` (the key of tokenized caches)."""
        h = hashlib.sha256()
        h.update(repr((self.name, self.vocab_size, self.pad_id, self.eos_id, self.bos_id)).encode())
        h.update(self._identity())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


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

    def __init__(self, model_file: str | None = None, path: str | None = None):
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"tokenizer 'sentencepiece' needs the optional extra: {EXTRA_HINT}") from e
        model_file = model_file or path
        if not model_file:
            raise TokenizerError("tokenizer 'sentencepiece' needs a model file: set "
                                 "data.tokenizer.path=<file.model>")
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"tokenizer 'sentencepiece': model file {model_file!r} not found")
        self.model_file = str(model_file)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"tokenizer 'sentencepiece': {self.model_file!r} is not a "
                                 f"SentencePiece model ({str(e).splitlines()[0]})") from None
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

    def _identity(self):
        return _file_bytes(self.model_file)

    def __getstate__(self):
        return {"model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["model_file"])


@contextlib.contextmanager
def _no_download():
    """Makes tiktoken fail instead of fetching a BPE file that is not in its local cache."""
    import tiktoken.load as tl

    def refuse(blobpath):
        raise TokenizerError(f"{blobpath} is not in tiktoken's local cache and downloads are off")

    old = tl.read_file
    tl.read_file = refuse
    try:
        yield
    finally:
        tl.read_file = old


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding: by name (tiktoken's local cache), object, or a local BPE file.

    ``path`` is a ``.tiktoken`` BPE ranks file (``base64(token) rank`` lines, as
    tiktoken caches them), split with ``pattern`` (a regex, or the name of a
    tiktoken encoding whose pattern to use: ``gpt2``, ``cl100k_base``...;
    default ``cl100k_base``). By name, the encoding must already be in the local
    cache (``TIKTOKEN_CACHE_DIR``) unless ``allow_download=True``.

    EOS is the encoding's ``eot_token`` when it has one; PAD (and BOS, EOS if
    missing) get new ids after ``n_vocab``.
    """

    name = "tiktoken"

    def __init__(self, encoding: Any = "gpt2", *, path: str | None = None, pattern: str | None = None,
                 allow_download: bool = False):
        try:
            import tiktoken
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"tokenizer 'tiktoken' needs the optional extra: {EXTRA_HINT}") from e
        self._args = {"encoding": encoding, "path": path, "pattern": pattern,
                      "allow_download": allow_download}
        self.path = str(path) if path else None
        if path:
            encoding = self._from_file(tiktoken, self.path, pattern)
        elif isinstance(encoding, str):
            ctx = contextlib.nullcontext() if allow_download else _no_download()
            try:
                with ctx:
                    encoding = tiktoken.get_encoding(encoding)
            except Exception as e:   # unknown name, or the BPE file is not cached
                raise TokenizerError(
                    f"tokenizer 'tiktoken': cannot load encoding {encoding!r} ({type(e).__name__}: {e}). "
                    f"Offline, point TIKTOKEN_CACHE_DIR at a cache that holds it or set "
                    f"data.tokenizer.path to a local .tiktoken BPE file; "
                    f"data.tokenizer.args={{'allow_download': True}} lets tiktoken fetch it") from None
        self._enc = encoding
        n = self._enc.n_vocab
        eot = getattr(self._enc, "eot_token", None)
        self.eos_id = int(eot) if eot is not None else n
        extra = n if eot is not None else n + 1
        self.pad_id, self.bos_id = extra, extra + 1
        self.vocab_size = extra + 2
        self._n = n

    @staticmethod
    def _from_file(tiktoken, path: str, pattern: str | None):
        from tiktoken.load import load_tiktoken_bpe
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer 'tiktoken': BPE file {path!r} not found")
        try:
            ranks = load_tiktoken_bpe(path)
        except Exception as e:
            raise TokenizerError(f"tokenizer 'tiktoken': {path!r} is not a tiktoken BPE file "
                                 f"('base64-token rank' lines): {type(e).__name__}: {e}") from None
        pattern = pattern or "cl100k_base"
        if pattern.isidentifier():   # the name of an encoding whose split pattern to use
            import tiktoken_ext.openai_public as op
            known = {"gpt2": op.r50k_pat_str, "r50k_base": op.r50k_pat_str,
                     "p50k_base": op.r50k_pat_str, "cl100k_base": _CL100K_PAT}
            if pattern not in known:
                raise TokenizerError(f"tokenizer 'tiktoken': unknown pattern name {pattern!r}; "
                                     f"give a regex or one of {sorted(known)}")
            pattern = known[pattern]
        eot = max(ranks.values()) + 1
        return tiktoken.Encoding(name=os.path.basename(path), pat_str=pattern, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": eot})

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= i < self._n and i != self.eos_id]
        return self._enc.decode(ids)

    def describe(self):
        d = {**super().describe(), "encoding": self._enc.name}
        return {**d, "path": self.path} if self.path else d

    def _identity(self):
        if self.path:
            return _file_bytes(self.path)
        return repr((self._enc.name, self._enc.n_vocab)).encode()

    def __getstate__(self):
        if self.path or isinstance(self._args["encoding"], str):
            return {"args": self._args}
        return {"enc": self._enc}

    def __setstate__(self, state):
        if "args" in state:
            self.__init__(**state["args"])
        else:
            self.__init__(state["enc"])


_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
               r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


# Special-token spellings looked up in an HF tokenizer's vocabulary, most common first.
_HF_SPECIALS = {
    "eos": ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "[CLS]"),
}


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer from a local ``tokenizer.json`` (or a directory with one).

    PAD/EOS/BOS are the tokens named by ``pad_token``/``eos_token``/``bos_token``
    (or, when not given, the first of the usual spellings the vocabulary has,
    see ``_HF_SPECIALS``); a missing one gets a new id after the vocabulary.
    Encoding adds no special tokens (the packer frames documents itself).
    """

    name = "hf"

    def __init__(self, path: str | None = None, *, eos_token: str | None = None,
                 pad_token: str | None = None, bos_token: str | None = None):
        try:
            from tokenizers import Tokenizer as _HFTok
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"tokenizer 'hf' needs the optional extra: {HF_EXTRA_HINT}") from e
        if not path:
            raise TokenizerError("tokenizer 'hf' needs a tokenizer.json file or a directory holding "
                                 "one: set data.tokenizer.path")
        self._args = {"path": path, "eos_token": eos_token, "pad_token": pad_token,
                      "bos_token": bos_token}
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else str(path)
        if not os.path.isfile(file):
            what = "directory holds no tokenizer.json" if os.path.isdir(path) else "file not found"
            raise FileNotFoundError(f"tokenizer 'hf': {path!r}: {what}")
        self.path, self.file = str(path), file
        try:
            self._tok = _HFTok.from_file(file)
        except Exception as e:   # tokenizers raises plain Exception on a bad file
            raise TokenizerError(f"tokenizer 'hf': {file!r} does not parse as a tokenizer.json "
                                 f"({str(e).splitlines()[0][:200]})") from None
        n = self._tok.get_vocab_size(with_added_tokens=True)
        extra = n
        ids, names = {}, {}
        for key, given in (("pad", pad_token), ("eos", eos_token), ("bos", bos_token)):
            candidates = (given,) if given else _HF_SPECIALS[key]
            got = next((self._tok.token_to_id(t) for t in candidates
                        if self._tok.token_to_id(t) is not None), None)
            if got is None and given:
                raise TokenizerError(f"tokenizer 'hf': {file!r} has no token {given!r} "
                                     f"({key}_token)")
            if got is None:
                got, extra = extra, extra + 1
            else:
                names[key] = next(t for t in candidates if self._tok.token_to_id(t) is not None)
            ids[key] = int(got)
        self.special_tokens = names
        self.pad_id, self.eos_id, self.bos_id = ids["pad"], ids["eos"], ids["bos"]
        self.vocab_size = extra
        self._n = n

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)
               if 0 <= i < self._n and i not in (self.pad_id, self.eos_id, self.bos_id)]
        return self._tok.decode(ids)

    def describe(self):
        return {**super().describe(), "path": os.path.abspath(self.path)}   # export copies it

    def _identity(self):
        return _file_bytes(self.file)

    def __getstate__(self):
        return {"args": self._args}

    def __setstate__(self, state):
        self.__init__(**state["args"])


_REGISTRY: dict[str, Callable[..., Tokenizer]] = {
    "byte": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "tiktoken": TiktokenTokenizer,
    "hf": HFTokenizer,
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str = "byte", **kwargs: Any) -> Tokenizer:
    """Builds tokenizer ``name`` (``byte``, ``sentencepiece``, ``tiktoken``, ``hf``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)


def from_config(kind: str = "byte", path: str | None = None,
                args: dict[str, Any] | None = None) -> Tokenizer:
    """The tokenizer of a ``data.tokenizer`` config section.

    ``path`` is the SentencePiece model file, the tiktoken BPE file or the HF
    ``tokenizer.json`` / directory; ``args`` go to the tokenizer's constructor
    (e.g. ``{"encoding": "gpt2", "allow_download": True}`` for tiktoken).
    Raises KeyError (unknown kind), FileNotFoundError or TokenizerError, each
    naming the file.
    """
    args = dict(args or {})
    if kind not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {kind!r}; known: {', '.join(names())}")
    if path:
        if kind == "byte":
            raise TokenizerError("tokenizer 'byte' takes no file; data.tokenizer.path must be empty")
        args["path"] = str(path)
    try:
        return _REGISTRY[kind](**args)
    except TypeError as e:   # an argument the constructor does not take
        raise TokenizerError(f"tokenizer {kind!r}: bad data.tokenizer.args {sorted(args)} ({e})") from None


def model_vocab_size(tok: Tokenizer, multiple: int | None = None) -> int:
    """Embedding rows for ``tok``: its ``vocab_size`` rounded up to ``multiple``.

    ``multiple=None``: :data:`DEFAULT_VOCAB_MULTIPLE` (128) for real tokenizers
    and 1 for the byte tokenizer, whose 264 ids are already padded (so byte runs
    keep their model).
    """
    if multiple is None:
        multiple = 1 if tok.name == "byte" else DEFAULT_VOCAB_MULTIPLE
    return _round_up(tok.vocab_size, max(1, int(multiple)))
