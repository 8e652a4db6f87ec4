"""Dataset specs: which domains a run uses and where each comes from.

A config names domains and their sources; domains may mix kinds in one run::

    DatasetSpec(domains=(
        DomainSpec(name="web", kind="jsonl", path="data/web.jsonl"),
        DomainSpec(name="code", kind="textdir", path="data/code", pattern="*.py"),
        DomainSpec(name="news", kind="tfds", path="lm1b", split="train"),
        DomainSpec(name="books", kind="arrayrecord", path="data/books.array_record"),
        DomainSpec(name="wiki", kind="hf", path="data/wiki/*.parquet"),
        # one domain per value of a column (names = the values):
        DomainSpec(name="pile", kind="hf", path="pile/*.jsonl", domain_field="meta.pile_set_name"),
    )).sources()        # -> {"web": JsonlSource, "code": TextDirSource, ...}

``DatasetSpec(corpus="mixpile-tiny")`` (or the string ``"mixpile-tiny"`` where a
spec is accepted) means every domain of that corpus (``<domain>.jsonl`` files in
``mixjax.data.corpus.corpus_dir(name)``; see :func:`corpus_sources`). A
directory of ``<domain>.parquet`` files works the same way (one
:class:`~mixjax.data.hf_sources.HFSource` per file).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Sequence

from mixjax.data import hf_sources, sources as src_lib
from mixjax.data.sources import DataError, DomainSource

KINDS = ("jsonl", "textdir", "arrayrecord", "tfds", "hf")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainSpec:
    """One domain: its name and source.

    Fields by kind: ``jsonl`` (path: file, or several separated by ","),
    ``textdir`` (path: directory; ``pattern``), ``arrayrecord`` (path: file(s);
    ``record_format`` text|json|tokens), ``tfds`` (path: dataset name;
    ``split``; ``data_dir``), ``hf`` (path: data files separated by "," with
    globs, a directory of them, or a ``save_to_disk`` directory; ``split``;
    ``domain_field``/``domain_value``: keep the rows of one value of a column;
    ``domain_field`` without ``domain_value`` makes one domain per value).
    ``group_field`` (hf, jsonl) names the document id whose parts share a split.
    ``text_field`` names the text in JSON/tfds/hf records.
    """

    name: str
    kind: str
    path: str
    text_field: str = "text"
    split: str = "train"            # tfds split
    data_dir: str | None = None     # tfds data_dir
    pattern: str = "*.txt"          # textdir glob
    record_format: str = "text"     # arrayrecord
    on_error: str = "raise"         # bad lines: "raise" or "skip"
    min_chars: int = 1              # shorter documents are filtered out
    domain_field: str | None = None  # hf: column (dotted if nested) whose value is the domain
    domain_value: Any = None         # hf: keep rows with this value (None: one domain per value)
    group_field: str | None = None   # hf, jsonl: field of document ids sharing a split

    def __post_init__(self):
        if not self.name:
            raise ValueError("DomainSpec: name must be non-empty")
        if self.kind not in KINDS:
            raise ValueError(f"domain {self.name!r}: unknown source kind {self.kind!r}; known: {KINDS}")

    def build(self) -> DomainSource:
        paths = [p.strip() for p in str(self.path).split(",") if p.strip()]
        if self.kind == "jsonl":
            return src_lib.JsonlSource(paths, domain=self.name, text_field=self.text_field,
                                       on_error=self.on_error, min_chars=self.min_chars,
                                       group_field=self.group_field)
        if self.kind == "textdir":
            return src_lib.TextDirSource(self.path, domain=self.name, pattern=self.pattern,
                                         on_error=self.on_error, min_chars=self.min_chars)
        if self.kind == "arrayrecord":
            return src_lib.ArrayRecordSource(paths, domain=self.name, record_format=self.record_format,
                                             text_field=self.text_field, on_error=self.on_error)
        if self.kind == "hf":
            return hf_sources.HFSource(self._hf_paths(), domain=self.name, text_field=self.text_field,
                                    domain_field=self.domain_field, domain_value=self.domain_value,
                                    split=self.split, min_chars=self.min_chars,
                                    group_field=self.group_field)
        return src_lib.TfdsSource(self.path, split=self.split, domain=self.name,
                                  text_field=self.text_field, data_dir=self.data_dir)


    def _hf_paths(self):
        paths = [p.strip() for p in str(self.path).split(",") if p.strip()]
        return paths[0] if len(paths) == 1 else paths

    @property
    def expands(self) -> bool:
        """An ``hf`` spec with ``domain_field`` and no ``domain_value``: one domain per value."""
        return self.kind == "hf" and self.domain_field is not None and self.domain_value is None

    def build_all(self) -> dict[str, DomainSource]:
        """``{name: source}``: this domain, or one per value of ``domain_field``."""
        if not self.expands:
            return {self.name: self.build()}
        return hf_sources.hf_column_sources(self._hf_paths(), self.domain_field,
                                         text_field=self.text_field, split=self.split,
                                         min_chars=self.min_chars, group_field=self.group_field)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """The domains of a run: explicit ``domains`` or a whole ``corpus`` (not both)."""

    domains: tuple[DomainSpec, ...] = ()
    corpus: str | None = None
    corpus_domains: tuple[str, ...] | None = None   # a subset of the corpus's domains

    def __post_init__(self):
        if bool(self.domains) == bool(self.corpus):
            raise ValueError("DatasetSpec: give exactly one of `domains` or `corpus`")
        if self.corpus_domains is not None and not self.corpus:
            raise ValueError("DatasetSpec: `corpus_domains` selects domains of a `corpus`; none given")
        names = [d.name for d in self.domains]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"DatasetSpec: duplicate domain names {dup}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSpec":
        """From plain config data: ``{"domains": [{"name":..., "kind":..., ...}]}`` or ``{"corpus": ...}``."""
        known = {f.name for f in dataclasses.fields(DomainSpec)}
        doms = []
        for i, item in enumerate(d.get("domains", ())):
            bad = sorted(set(item) - known)
            if bad:
                raise ValueError(f"DatasetSpec domain #{i} ({item.get('name')!r}): unknown key(s) {bad}; "
                                 f"known: {sorted(known)}")
            doms.append(DomainSpec(**item))
        unknown = sorted(set(d) - {"domains", "corpus", "corpus_domains"})
        if unknown:
            raise ValueError(f"DatasetSpec: unknown key(s) {unknown}; known: corpus, corpus_domains, domains")
        sub = d.get("corpus_domains")
        return cls(domains=tuple(doms), corpus=d.get("corpus"),
                   corpus_domains=tuple(sub) if sub is not None else None)

    def sources(self) -> dict[str, DomainSource]:
        if self.corpus:
            return corpus_sources(self.corpus, self.corpus_domains)
        out: dict[str, DomainSource] = {}
        for d in self.domains:
            for name, src in d.build_all().items():
                if name in out:
                    raise DataError(f"DatasetSpec: domain {name!r} is defined twice "
                                    f"(second time by spec {d.name!r})")
                out[name] = src
        return out


def jsonl_dir_sources(directory: str | os.PathLike, **kwargs: Any) -> dict[str, src_lib.JsonlSource]:
    """``{stem: JsonlSource}`` for every ``<domain>.jsonl`` in ``directory`` (sorted names)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} not found")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise DataError(f"data directory {str(directory)!r} holds no <domain>.jsonl files")
    return {f.stem: src_lib.JsonlSource(f, domain=f.stem, **kwargs) for f in files}


def parquet_dir_sources(directory: str | os.PathLike, domains: Sequence[str] | None = None,
                        **kwargs: Any) -> dict[str, hf_sources.HFSource]:
    """``{stem: HFSource}`` for every ``<domain>.parquet`` in ``directory`` (sorted names).

    Like a directory of ``<domain>.jsonl`` files: text under ``text``; an ``id``
    column, when present, groups document parts into one split.
    """
    directory = pathlib.Path(directory)
    files = {f.stem: f for f in sorted(directory.glob("*.parquet"))}
    if not files:
        raise DataError(f"data directory {str(directory)!r} holds no <domain>.parquet files")
    names = list(files) if domains is None else list(domains)
    unknown = [d for d in names if d not in files]
    if unknown:
        raise DataError(f"corpus {str(directory)!r}: unknown domain(s) {unknown}; known: {sorted(files)}")
    out = {}
    for d in names:
        import pyarrow.parquet as pq
        cols = pq.read_schema(files[d]).names
        group = kwargs.get("group_field", "id" if "id" in cols else None)
        out[d] = hf_sources.HFSource(str(files[d]), domain=d, group_field=group,
                                  **{k: v for k, v in kwargs.items() if k != "group_field"})
    return out


def corpus_sources(name: str, domains: Sequence[str] | None = None,
                   **kwargs: Any) -> dict[str, src_lib.JsonlSource]:
    """The domains of corpus ``name`` (``mixjax.data.corpus.corpus_dir(name)``), sorted by name.

    ``name`` may also be a directory of ``<domain>.jsonl`` files. ``domains``
    selects a subset (in the given order); an unknown name is an error naming it.
    ``kwargs`` go to :class:`JsonlSource` (``on_error``, ``min_chars``, ...).
    Corpus documents are grouped by their ``id`` (parts of one document share
    a split). A corpus's split floors (manifest ``split_floors``, else its
    recipe's; see :mod:`mixjax.data.splits`) are attached to every source.
    """
    kwargs.setdefault("group_field", "id")
    out = _corpus_sources(name, domains, **kwargs)
    floors = corpus_floors(name)
    if floors is not None:
        for src in out.values():
            src.split_floors = floors
    return out


def corpus_floors(name: str):
    """The split floors of corpus ``name`` (a name or a directory): its manifest's
    ``split_floors``, else its recipe's; None for a directory without them."""
    from mixjax.data.splits import Floors
    name = str(name)
    path = pathlib.Path(os.path.expanduser(name))
    manifest = None
    if path.is_dir():
        mpath = path / "manifest.json"
    else:
        try:
            from mixjax.data.corpus import corpus_dir
            mpath = corpus_dir(name) / "manifest.json"
        except (ImportError, KeyError, FileNotFoundError):
            mpath = None
    if mpath is not None and mpath.is_file():
        import json
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if manifest.get("split_floors"):
            return Floors(**manifest["split_floors"])
        name = manifest.get("name", name)
    try:
        from mixjax.data.corpus.recipes import CORPORA
    except ImportError:
        return None
    recipe = CORPORA.get(name)
    return None if recipe is None or recipe.split_floors is None else Floors(**recipe.split_floors)


def _corpus_sources(name: str, domains: Sequence[str] | None = None,
                    **kwargs: Any) -> dict[str, src_lib.JsonlSource]:
    name = str(name)
    if os.path.isdir(name) or os.sep in name or name.startswith((".", "~")):
        directory = pathlib.Path(os.path.expanduser(name))     # a path, not a corpus name
    else:
        try:
            from mixjax.data.corpus import corpus_dir
        except ImportError as e:
            raise ImportError(f"corpus {name!r}: mixjax.data.corpus is not available ({e})") from e
        directory = corpus_dir(name)
    if directory.is_dir() and not any(directory.glob("*.jsonl")) and any(directory.glob("*.parquet")):
        return parquet_dir_sources(directory, domains)
    if domains is None:
        return jsonl_dir_sources(directory, **kwargs)
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {str(directory)!r} not found")
    known = sorted(f.stem for f in directory.glob("*.jsonl"))
    for d in domains:
        if d not in known:
            raise DataError(f"corpus {name!r}: unknown domain {d!r}; known: {known}")
    return {d: src_lib.JsonlSource(directory / f"{d}.jsonl", domain=d, **kwargs) for d in domains}


def resolve_sources(x: Any) -> dict[str, DomainSource]:
    """``{domain: source}`` from a DatasetSpec, a dict spec, a corpus name/dir, or sources."""
    if isinstance(x, DatasetSpec):
        return x.sources()
    if isinstance(x, (str, os.PathLike)):
        return corpus_sources(str(x))
    if isinstance(x, Mapping) and ("domains" in x or "corpus" in x) and not all(
            isinstance(v, DomainSource) for v in x.values()):
        return DatasetSpec.from_dict(x).sources()
    if isinstance(x, Mapping):
        return dict(x)
    names, srcs = src_lib.as_domain_list(x)
    return dict(zip(names, srcs))
