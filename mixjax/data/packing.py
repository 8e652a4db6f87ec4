"""Tokenization transform and concat-then-split packing of one domain's stream.

A domain's documents ``x_1, x_2, ...`` (token arrays) become the stream

    [BOS] x_1 EOS [BOS] x_2 EOS ...        (BOS only when ``bos=True``)

cut into consecutive, non-overlapping sequences of ``length = S + 1`` tokens
(inputs ``seq[:-1]``, targets ``seq[1:]``). A document longer than a sequence
continues in the next one; nothing is padded or dropped in the training
stream. Packing runs on one domain's stream, so a sequence never mixes two
domains.

:class:`PackIterDataset` is a grain ``IterDataset`` whose iterator state is
``{"parent": <parent state before the first element still in the buffer>,
"skip": <tokens of that element already emitted>}``: small, and exact on
restore (that element is re-read and re-tokenized). The sampler feeds it
chunks of documents (:class:`TokenizeChunk`) to amortise grain's per-element
cost.
:func:`pack_arrays` is the same packing over an in-memory list (eval sets).
"""

from __future__ import annotations

import collections
import copy
from typing import Any, Iterable

import grain
import numpy as np

from mixjax.data.tokenizers import ByteTokenizer, Tokenizer


def tokenize(doc: Any, tokenizer: Tokenizer) -> np.ndarray:
    """Document -> int32 token array. Integer arrays (pre-tokenized) pass through."""
    if isinstance(doc, np.ndarray):
        return doc.astype(np.int32, copy=False).reshape(-1)
    return tokenizer.encode_array(doc)


class TokenizeDoc(grain.transforms.Map):
    """grain transform: document -> int32 token array (see :func:`tokenize`)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, doc: Any) -> np.ndarray:
        return tokenize(doc, self.tokenizer)


class TokenizeChunk(grain.transforms.Map):
    """grain transform: list of documents -> one framed stream piece.

    ``[d_1, ..., d_c] -> [BOS] t(d_1) EOS ... [BOS] t(d_c) EOS`` as int32.
    """

    def __init__(self, tokenizer: Tokenizer, *, bos: bool = False):
        self.tokenizer, self.bos = tokenizer, bool(bos)

    def map(self, docs: list) -> np.ndarray:
        bos = self.tokenizer.bos_id if self.bos else None
        eos = self.tokenizer.eos_id
        if isinstance(self.tokenizer, ByteTokenizer) and all(isinstance(d, str) for d in docs):
            return _frame_bytes([d.encode("utf-8") for d in docs], eos, bos)
        # one concatenation for the chunk, not one per document
        eos_a, parts = np.asarray([eos], np.int32), []
        for d in docs:
            if bos is not None:
                parts.append(np.asarray([bos], np.int32))
            parts += [tokenize(d, self.tokenizer).astype(np.int32, copy=False).reshape(-1), eos_a]
        return np.concatenate(parts) if parts else np.empty(0, np.int32)


def _frame_bytes(encoded: list[bytes], eos_id: int, bos_id: int | None) -> np.ndarray:
    """``[BOS] b_1 EOS [BOS] b_2 EOS ...`` of UTF-8 byte strings as int32, in array operations.

    The bytes are the byte tokenizer's ids (0-255), so the chunk is one ``frombuffer`` of
    the joined documents with the frame ids inserted at the documents' ends (and starts):
    no per-document array, cast or concatenation.
    """
    c = len(encoded)
    lens = np.fromiter(map(len, encoded), np.int64, c)
    ends = np.cumsum(lens)
    tokens = np.frombuffer(b"".join(encoded), np.uint8)
    per = 1 if bos_id is None else 2          # frame ids per document
    # document j's EOS lands after its tokens and the j * per frame ids before it; its BOS
    # (if any) right before its first token: every other position takes the next token
    out = np.empty(len(tokens) + per * c, np.int32)
    shift = per * np.arange(c)
    eos_at = ends + shift + (per - 1)
    is_token = np.ones(len(out), bool)
    is_token[eos_at] = False
    out[eos_at] = eos_id
    if bos_id is not None:
        bos_at = ends - lens + shift
        is_token[bos_at] = False
        out[bos_at] = bos_id
    out[is_token] = tokens
    return out


def _frame(tokens: np.ndarray, eos_id: int, bos_id: int | None) -> np.ndarray:
    parts = [tokens.astype(np.int32, copy=False).reshape(-1), np.asarray([eos_id], np.int32)]
    if bos_id is not None:
        parts.insert(0, np.asarray([bos_id], np.int32))
    return np.concatenate(parts)


class _PackIterator(grain.DatasetIterator):

    def __init__(self, parent: grain.DatasetIterator, length: int, eos_id: int | None,
                 bos_id: int | None):
        super().__init__(parent)
        self._length, self._eos, self._bos = length, eos_id, bos_id
        self._docs: collections.deque = collections.deque()   # (parent state before doc, framed doc)
        self._skip = 0          # tokens of the front document already emitted
        self._buffered = 0      # tokens available = sum(len(doc)) - skip

    def _read_doc(self) -> None:
        state = copy.deepcopy(self._parent.get_state())   # kept until the element is used up
        doc = next(self._parent)
        if self._eos is not None:
            doc = _frame(doc, self._eos, self._bos)
        self._docs.append((state, doc))
        self._buffered += len(doc)

    def __next__(self) -> np.ndarray:
        length = self._length
        while self._buffered < length:
            self._read_doc()
        out = np.empty(length, np.int32)
        pos = 0
        while pos < length:
            doc = self._docs[0][1]
            take = min(length - pos, len(doc) - self._skip)
            out[pos:pos + take] = doc[self._skip:self._skip + take]
            pos += take
            self._skip += take
            if self._skip == len(doc):
                self._docs.popleft()
                self._skip = 0
        self._buffered -= length
        return out

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` sequences as int32[n, length]: ``n`` calls of ``next`` in one copy.

        The stream is consumed exactly as by ``n`` calls of ``__next__`` (same
        values, same state after), but the tokens are gathered per buffered
        stream piece, not per sequence.
        """
        length, need = self._length, int(n) * self._length
        if n <= 0:
            return np.empty((0, length), np.int32)
        while self._buffered < need:
            self._read_doc()
        pieces, got = [], 0
        while got < need:
            doc = self._docs[0][1]
            take = min(need - got, len(doc) - self._skip)
            pieces.append(doc[self._skip:self._skip + take])
            got += take
            self._skip += take
            if self._skip == len(doc):
                self._docs.popleft()
                self._skip = 0
        self._buffered -= need
        return np.concatenate(pieces).astype(np.int32, copy=False).reshape(int(n), length)

    def get_state(self) -> dict[str, Any]:
        if self._docs:
            return {"parent": self._docs[0][0], "skip": self._skip}
        return {"parent": self._parent.get_state(), "skip": 0}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._docs.clear()
        self._skip = self._buffered = 0
        skip = int(state["skip"])
        if skip:
            self._read_doc()    # the partly emitted document; skip < its length by construction
            self._skip = skip
            self._buffered -= skip

    def __str__(self) -> str:
        return f"PackIterator(length={self._length})"


class PackIterDataset(grain.IterDataset):
    """Concat-then-split packing of token arrays into int32[length] sequences.

    With ``eos_id`` set, each parent element is one document and gets framed
    (``[BOS] doc EOS``); with ``eos_id=None`` elements are already framed
    stream pieces (see :class:`TokenizeChunk`) and are concatenated as they are.
    """

    def __init__(self, parent: grain.IterDataset, *, length: int, eos_id: int | None,
                 bos_id: int | None = None):
        super().__init__(parent)
        if length < 2:
            raise ValueError(f"packed sequence length must be >= 2 (S + 1), got {length}")
        self.length, self.eos_id, self.bos_id = int(length), eos_id, bos_id

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self.length, self.eos_id, self.bos_id)

    def __str__(self) -> str:
        return f"PackIterDataset(length={self.length})"


def pack_arrays(docs: Iterable[np.ndarray], *, length: int, eos_id: int, pad_id: int,
                bos_id: int | None = None, max_sequences: int | None = None,
                pad_last: bool = True) -> np.ndarray:
    """Packs token arrays into ``int32[N, length]`` the way :class:`PackIterDataset` does.

    Stops once ``max_sequences`` sequences are full. If the documents run out
    first, the last partial sequence is padded with ``pad_id`` (``pad_last``)
    or dropped.
    """
    rows: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    have = 0
    for tokens in docs:
        doc = _frame(np.asarray(tokens), eos_id, bos_id)
        buf.append(doc)
        have += len(doc)
        if have >= length:
            flat = np.concatenate(buf)
            n = len(flat) // length
            rows.extend(flat[: n * length].reshape(n, length))
            rest = flat[n * length:]
            buf, have = ([rest] if len(rest) else []), len(rest)
            if max_sequences is not None and len(rows) >= max_sequences:
                return np.stack(rows[:max_sequences]).astype(np.int32)
    if have and pad_last:
        last = np.full(length, pad_id, np.int32)
        last[:have] = np.concatenate(buf)
        rows.append(last)
    if not rows:
        return np.zeros((0, length), np.int32)
    return np.stack(rows).astype(np.int32)
