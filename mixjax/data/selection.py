"""Data selection: per-document weights from an offline scorer, applied per domain.

A *scorer* (any function ``doc -> weight >= 0``: a length filter, a quality classifier,
a reference model's loss, ...) runs once, offline, over a domain's documents and writes a
*selection file*, keyed by the **content hash** of each document (so the file does not
depend on file order, sharding or the split seed):

    {"format": "mixjax.selection/1", "scorer": "<name>", "default": 1.0}     <- header line
    {"hash": "<sha256 of the document, 32 hex>", "weight": 0.25}            <- one per doc
    ...

``hash`` is :func:`content_hash`: sha256 of the UTF-8 text (or of the int32 tokens of a
pre-tokenized document), its first 32 hex digits. A document the file does not list gets
``default``. The run applies it with ``data.selection = {"path": FILE, "mode": MODE}``:

* ``drop``: documents of weight 0 are removed; the rest are kept (their weight is ignored).
* ``resample``: each domain's train split becomes N draws, with replacement, of its N
  documents with probability ``w_i / sum_j w_j`` (``numpy.random.default_rng([seed,
  crc32(domain), file checksum])``, drawn once per run); the sampler's epochs reshuffle
  that multiset as they shuffle any source.

``drop`` and ``resample`` act on the *train split* of each domain, after the split is made (the split is a
function of the unselected domain, so validation/test documents never move into
training), by wrapping each domain's source (:class:`SelectedSource`) before the sampler
is built: the sampler itself is unchanged, its stream is a function of (seed, selection
file), and a resumed run continues it exactly. The file's sha256 is recorded in
``run_info.json`` (``data_selection``) and a resume with a different file is refused.
Token counts (the ``natural`` mixture) are those of the selected train split.

* ``weight``: every document is kept; each training sequence b gets the sample weight
  ``s_b = (1/S) sum_{t=1..S} w(doc of target token t)`` (the token-weighted mean of its
  documents' weights), passed to the step as ``batch["sample_weight"]`` f32[B], which
  multiplies the token weights: ``L = sum_b s_b r_d(b) sum_t m l / sum_b s_b r_d(b) sum_t m``
  (``mixjax.core.step``; a mixer with ``model_gradient = "coeffs"`` ignores it). The
  weights travel in a second packed stream per domain, in lockstep with the tokens
  (:class:`WeightedDomainSampler`: the same documents, shuffle and framing; each token's
  weight as an int32 fixed-point code, ``round(w * 2^16)``, so weights above 32767 are
  clipped and the resolution is 2^-16). It costs a second tokenization of every document.

``mixjax data select CORPUS --scorer length --out FILE`` writes a file from a built-in
scorer (:data:`SCORERS`); docs/extending.md section 6 writes a scorer of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import zlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from mixjax.data.sources import DataError, DomainSource
from mixjax.data.splits import IndexedView

FORMAT = "mixjax.selection/1"
MODES = ("drop", "resample", "weight")
SELECT_MODES = ("drop", "resample")          # the ones that change which documents are read
WEIGHT_SCALE = 1 << 16                       # weight mode: fixed-point code of a token's weight


def content_hash(doc: Any) -> str:
    """The key of a document: sha256 of its UTF-8 text (int32 tokens if pre-tokenized)."""
    if isinstance(doc, np.ndarray):
        data = np.ascontiguousarray(doc.reshape(-1), dtype="<i4").tobytes()
    else:
        data = str(doc).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


def corpus_documents(sources: Mapping[str, DomainSource]) -> tuple[list, list[str], list[str]]:
    """``(documents, content hashes, domain names)`` of every document, domain by domain."""
    docs, hashes, domains = [], [], []
    for name, src in sources.items():
        for i in range(len(src)):
            docs.append(src[i])
            hashes.append(content_hash(docs[-1]))
            domains.append(name)
    return docs, hashes, domains


@dataclasses.dataclass(frozen=True)
class Selection:
    """A loaded selection file."""

    weights: Mapping[str, float]       # {content hash: weight}
    default: float                     # weight of a document the file does not list
    sha256: str                        # of the file's bytes (run identity / provenance)
    path: str
    scorer: str | None = None
    # written by a set-level method (mixjax.data.subset_select): every document of the corpus
    # is listed, and ``corpus`` is the checksum of their hashes (:func:`corpus_checksum`)
    complete: bool = False
    corpus: str | None = None

    def weight(self, doc: Any) -> float:
        return float(self.weights.get(content_hash(doc), self.default))

    def info(self, mode: str) -> dict:
        out = {"path": self.path, "mode": mode, "sha256": self.sha256, "scorer": self.scorer,
               "documents": len(self.weights), "default": self.default}
        if self.corpus is not None:
            out["corpus"] = self.corpus
        return out


def _check_weight(w: Any, where: str) -> float:
    w = float(w)
    if not (math.isfinite(w) and w >= 0):
        raise DataError(f"{where}: weight must be finite and >= 0, got {w}")
    return w


def corpus_checksum(hashes: Iterable[str]) -> str:
    """sha256 of the sorted, distinct content hashes of a corpus's documents."""
    return hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()


def write(path: str | pathlib.Path, weights: Mapping[str, float], *, scorer: str,
          default: float = 1.0, complete: bool = False) -> str:
    """Writes a selection file (documents sorted by hash: the same weights, the same bytes);
    returns its sha256. ``complete``: ``weights`` lists every document of the corpus (the
    header then holds the corpus checksum, and a run checks its corpus against it)."""
    path = pathlib.Path(path)
    header = {"format": FORMAT, "scorer": scorer, "default": _check_weight(default, "default")}
    if complete:
        header.update(complete=True, corpus=corpus_checksum(weights))
    lines = [json.dumps(header)]
    lines += [json.dumps({"hash": h, "weight": _check_weight(weights[h], f"document {h}")})
              for h in sorted(weights)]
    data = ("\n".join(lines) + "\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load(path: str | pathlib.Path) -> Selection:
    """Reads and checks a selection file (DataError naming the line at fault)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"selection file {str(path)!r} does not exist")
    data = path.read_bytes()
    lines = data.decode("utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT:
        raise DataError(f"{path}:1: not a selection file (want a header with format {FORMAT!r})")
    weights: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            h, w = str(rec["hash"]), rec["weight"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: want {{\"hash\": ..., \"weight\": ...}}") from None
        weights[h] = _check_weight(w, f"{path}:{n}")
    return Selection(weights, _check_weight(header.get("default", 1.0), f"{path}:1 default"),
                     hashlib.sha256(data).hexdigest(), str(path), header.get("scorer"),
                     bool(header.get("complete", False)), header.get("corpus"))


def check_corpus(sources: Mapping[str, DomainSource], sel: Selection) -> None:
    """A *complete* selection file (written by ``mixjax data select --method``) must list every
    document of the corpus it is applied to: a DataError naming the file, the domain and the
    count of unlisted documents otherwise (another corpus, or an edited one)."""
    if not sel.complete:
        return
    for domain, src in sources.items():
        missing = sum(content_hash(src[i]) not in sel.weights for i in range(len(src)))
        if missing:
            raise DataError(f"selection file {sel.path!r} does not match the corpus: {missing} "
                            f"of the {len(src)} documents of domain {domain!r} are not in it "
                            f"(it was written for corpus checksum {str(sel.corpus)[:16]}...)")


def score(sources: Mapping[str, DomainSource] | Iterable[DomainSource],
          scorer: Callable[[Any], float]) -> dict[str, float]:
    """``{content hash: scorer(doc)}`` over every document of ``sources``."""
    items = sources.values() if isinstance(sources, Mapping) else sources
    out: dict[str, float] = {}
    for src in items:
        for i in range(len(src)):
            doc = src[i]
            out[content_hash(doc)] = float(scorer(doc))
    return out


# -- built-in scorers (``mixjax data select --scorer``) ------------------------------------------
def _length_scorer(min_chars: int = 0, max_chars: int | None = None) -> Callable[[Any], float]:
    """1 for documents with ``min_chars <= len <= max_chars`` characters (tokens), else 0."""
    def scorer(doc):
        n = len(doc)
        return float(n >= min_chars and (max_chars is None or n <= max_chars))
    return scorer


SCORERS: dict[str, Callable[..., Callable[[Any], float]]] = {"length": _length_scorer}


# -- applying a selection ---------------------------------------------------------------------
class SelectedSource(IndexedView):
    """The documents of ``source`` at ``indices`` (kept or drawn), with the selection's
    checksum in the fingerprint (token caches of selected data are their own)."""

    def __init__(self, source: DomainSource, indices: np.ndarray, sha256: str, mode: str):
        super().__init__(source, indices)
        self.sha256, self.mode = sha256, mode

    def fingerprint(self):
        base = self.source.fingerprint()
        return None if base is None else {"source": base, "selection": self.sha256,
                                          "mode": self.mode}

    def describe(self):
        return f"{self.source.describe()}[selection {self.mode}: {len(self)} docs]"


def select(source: DomainSource, selection: Selection, mode: str, *, seed: int,
           domain: str | None = None) -> SelectedSource:
    """``source`` with ``selection`` applied in ``mode`` (see the module docstring)."""
    if mode not in SELECT_MODES:
        raise ValueError(f"selection mode must be one of {SELECT_MODES}, got {mode!r}")
    domain = domain or source.domain
    w = np.asarray([selection.weight(source[i]) for i in range(len(source))], np.float64)
    if mode == "drop":
        idx = np.flatnonzero(w > 0)
    else:
        total = w.sum()
        if total <= 0:
            idx = np.zeros((0,), np.int64)
        else:
            rng = np.random.default_rng([int(seed), zlib.crc32(domain.encode()),
                                         int(selection.sha256[:8], 16)])
            # sorted: the draw is a multiset; the sampler's shuffle orders it
            idx = np.sort(rng.choice(len(w), size=len(w), replace=True, p=w / total))
    if len(idx) == 0:
        raise DataError(f"domain {domain!r}: the selection {selection.path!r} ({mode}) leaves "
                        f"no document of its {len(source)}")
    return SelectedSource(source, idx, selection.sha256, mode)


def select_all(sources: Mapping[str, DomainSource], selection: Selection, mode: str, *,
               seed: int) -> dict[str, SelectedSource]:
    return {d: select(s, selection, mode, seed=seed, domain=d) for d, s in sources.items()}


def check_resume(run_dir: str | pathlib.Path, info: dict | None) -> None:
    """A resumed run must use the selection file it started with (by checksum)."""
    path = pathlib.Path(run_dir) / "run_info.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text()).get("data_selection")
    was, now = (saved or {}).get("sha256"), (info or {}).get("sha256")
    if was != now:
        from mixjax.config import ConfigError
        raise ConfigError(f"config key 'data.selection': the run started with selection "
                          f"sha256 {was}, now {now}; resuming would change its data stream")


# -- weight mode: per-sequence sample weights -------------------------------------------------
class WeightCodes:
    """grain map: a chunk of documents -> the int32 weight code of every token of its framed
    stream piece (the same lengths as ``packing.TokenizeChunk``'s output)."""

    def __init__(self, tokenizer, selection: Selection, *, bos: bool = False):
        self.tokenizer, self.selection, self.bos = tokenizer, selection, bool(bos)

    def __call__(self, docs: list) -> np.ndarray:
        from mixjax.data.packing import tokenize
        parts = []
        for d in docs:
            n = len(tokenize(d, self.tokenizer)) + 1 + int(self.bos)   # + EOS (+ BOS)
            code = min(round(self.selection.weight(d) * WEIGHT_SCALE), np.iinfo(np.int32).max)
            parts.append(np.full(n, code, np.int32))
        return np.concatenate(parts)


def _weighted_sampler_class():
    import grain

    from mixjax.data.packing import PackIterDataset
    from mixjax.data.sampler import DomainSampler, domain_seed
    from mixjax.data.shuffling import ShuffledDocChunks

    class WeightedDomainSampler(DomainSampler):
        """A :class:`~mixjax.data.DomainSampler` whose batches also hold ``sample_weight``
        f32[B] (``data.selection.mode = "weight"``): per domain, a second pipeline packs
        the weight codes of the same document stream (same shuffle seed, chunking and
        framing), read in lockstep with the tokens and checkpointed with them."""

        def __init__(self, sources, *, selection: Selection, **kwargs):
            super().__init__(sources, **kwargs)
            self.selection = selection
            self._witers: list = [None] * len(self.domains)

        def _weight_iterator(self, d: int):
            it = self._witers[d]
            if it is None:
                ds = ShuffledDocChunks(self.sources[d],
                                       seed=domain_seed(self.seed, self.domains[d]),
                                       chunk=self.chunk, process_index=self.process_index,
                                       process_count=self.process_count)
                ds = ds.map(WeightCodes(self.tokenizer, self.selection, bos=self.bos))
                ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
                it = self._witers[d] = iter(PackIterDataset(ds, length=self.seq_len + 1,
                                                            eos_id=None))
            return it

        def read_weights(self, ids: np.ndarray) -> np.ndarray:
            """f32[len(ids)]: s_b, the mean weight of the target tokens of each row."""
            ids = np.asarray(ids)
            out = np.empty((len(ids),), np.float32)
            for d in np.unique(ids):
                rows = np.flatnonzero(ids == d)
                codes = self._weight_iterator(int(d)).take(len(rows))
                out[rows] = codes[:, 1:].astype(np.float64).mean(axis=1) / WEIGHT_SCALE
            return out

        def __next__(self):
            ids, counts = self.composer.next_ids()
            b = self.local_batch_size
            ids = ids[self.process_index * b:(self.process_index + 1) * b]
            return {"tokens": self.read_rows(ids), "domain_id": ids, "domain_counts": counts,
                    "sample_weight": self.read_weights(ids)}

        def _config(self):
            return {**super()._config(), "selection": self.selection.sha256}

        def get_state(self):
            return {**super().get_state(),
                    "weights": {n: (None if it is None else it.get_state())
                                for n, it in zip(self.domains, self._witers)}}

        def set_state(self, state):
            super().set_state(state)
            for d, name in enumerate(self.domains):
                saved = state.get("weights", {}).get(name)
                if saved is None:
                    self._witers[d] = None
                else:
                    self._weight_iterator(d).set_state(saved)

    return WeightedDomainSampler


def weighted_sampler(sources, *, selection: Selection, **kwargs):
    """The sampler of ``data.selection.mode = "weight"`` (see :func:`_weighted_sampler_class`)."""
    return _weighted_sampler_class()(sources, selection=selection, **kwargs)
