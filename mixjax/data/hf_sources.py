"""Hugging Face ``datasets`` as domain sources, read from local files only (no hub access
at run time).

* :class:`HFSource` — a dataset read from local files
  (``load_dataset(<parquet|json|arrow|csv>, data_files=...)``) or a ``save_to_disk``
  directory (``load_from_disk``); optionally only the rows whose ``domain_field`` (dotted
  for nested, e.g. ``meta.pile_set_name``) equals ``domain_value``.
* :func:`hf_column_sources` — one :class:`HFSource` per value of a column (one file holding
  every domain, as the Pile's ``meta.pile_set_name``).
"""

from __future__ import annotations

import glob
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from mixjax.data.sources import DataError, DomainSource, _require_docs, file_stats, group_hash


HF_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow",
               ".csv": "csv"}


def _hf_builder(files: Sequence[str], domain: str) -> str:
    exts = {pathlib.Path(f).suffix.lower() for f in files}
    kinds = {HF_BUILDERS.get(e) for e in exts}
    if len(kinds) != 1 or None in kinds:
        raise DataError(f"domain {domain!r}: cannot tell the format of {list(files)} (extensions "
                        f"{sorted(exts)}; known: {sorted(HF_BUILDERS)}); use one format per domain")
    return kinds.pop()


def load_hf_dataset(path: str | Sequence[str], *, domain: str = "", split: str = "train",
                    cache_dir: str | None = None):
    """A local ``datasets.Dataset``: a ``save_to_disk`` directory, or data files.

    ``path``: a directory written by ``Dataset.save_to_disk``; one file or a list
    of files (``.parquet``, ``.jsonl``/``.json``, ``.arrow``, ``.csv``; glob
    patterns allowed); or a directory of such files. Nothing is downloaded: the
    files are read locally and converted once into memory-mapped Arrow files in
    the ``datasets`` cache (``cache_dir`` or ``HF_DATASETS_CACHE``), so a dataset
    larger than memory is fine.
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"domain {domain!r}: source kind 'hf' needs the optional extra: "
                          f"pip install 'mixjax[hf]'") from e
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    paths = [str(p) for p in paths]
    if len(paths) == 1 and os.path.isdir(paths[0]):
        d = paths[0]
        if os.path.isfile(os.path.join(d, "state.json")) or \
                os.path.isfile(os.path.join(d, "dataset_dict.json")):
            try:
                ds = datasets.load_from_disk(d)
            except Exception as e:
                raise DataError(f"domain {domain!r}: cannot load_from_disk {d!r}: "
                                f"{type(e).__name__}: {e}") from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"domain {domain!r}: {d!r} has no split {split!r} "
                                    f"(splits: {sorted(ds)})")
                ds = ds[split]
            return ds
        files = sorted(str(p) for p in pathlib.Path(d).iterdir()
                       if p.suffix.lower() in HF_BUILDERS)
        if not files:
            raise DataError(f"domain {domain!r}: directory {d!r} is neither a save_to_disk "
                            f"dataset nor holds data files ({sorted(HF_BUILDERS)})")
    else:
        files = []
        for p in paths:
            hits = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
            for h in hits:
                if not os.path.isfile(h):
                    raise FileNotFoundError(f"domain {domain!r}: data file {h!r} not found")
            if not hits:
                raise FileNotFoundError(f"domain {domain!r}: no file matches {p!r}")
            files.extend(hits)
    builder = _hf_builder(files, domain)
    # HF_DATASETS_CACHE read now, not when `datasets` was imported
    cache_dir = cache_dir or os.environ.get("HF_DATASETS_CACHE") or None
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
    except Exception as e:   # a corrupt file: name it
        raise DataError(f"domain {domain!r}: cannot read {files} as {builder}: "
                        f"{type(e).__name__}: {e}") from None


def _hf_column(ds, field: str, domain: str):
    """The (possibly nested, dotted) column ``field`` of ``ds`` as a pyarrow array."""
    import pyarrow.compute as pc
    table = ds.data.table
    head, *rest = field.split(".")
    if head not in table.column_names:
        raise DataError(f"domain {domain!r}: the HF dataset has no column {field!r} "
                        f"(columns: {table.column_names})")
    col = table.column(head)
    for i, part in enumerate(rest):
        try:
            col = pc.struct_field(col, part)
        except Exception:
            raise DataError(f"domain {domain!r}: the HF dataset has no column {field!r} "
                            f"({'.'.join([head] + rest[:i])!r} has no field {part!r})") from None
    return col


class HFSource(DomainSource):
    """Rows of a local Hugging Face dataset (see :func:`load_hf_dataset`); text under ``text_field``.

    ``domain_field``/``domain_value`` keep only the rows of one domain (e.g.
    ``meta.pile_set_name == "Github"``); ``min_chars`` drops short rows;
    ``group_field`` (a column of document ids) keeps parts of one document in
    one split, as for JSONL. The index of kept rows is computed once with
    vectorised Arrow kernels; rows are then read by random access from the
    memory-mapped Arrow files, so splits, packing, the sampler and exact resume
    behave as for any other source. ``dataset`` passes an already-loaded one.
    """

    def __init__(self, path: str | Sequence[str] | None = None, *, domain: str = "",
                 text_field: str = "text", domain_field: str | None = None,
                 domain_value: Any = None, split: str = "train", min_chars: int = 1,
                 group_field: str | None = None, cache_dir: str | None = None, dataset=None):
        import pyarrow.compute as pc
        self.domain = domain or (f"{domain_value}" if domain_value is not None
                                 else pathlib.Path(str(path)).stem)
        self.path, self.text_field, self.split = path, text_field, split
        self.domain_field, self.domain_value = domain_field, domain_value
        self.min_chars, self.group_field = int(min_chars), group_field
        self._ds = dataset if dataset is not None else load_hf_dataset(
            path, domain=self.domain, split=split, cache_dir=cache_dir)
        text = _hf_column(self._ds, text_field, self.domain)
        import pyarrow as pa
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise DataError(f"domain {self.domain!r}: HF dataset column {text_field!r} holds "
                            f"{text.type}, not strings")
        keep = pc.fill_null(pc.greater_equal(pc.utf8_length(text), self.min_chars), False)
        if domain_field is not None:
            col = _hf_column(self._ds, domain_field, self.domain)
            keep = pc.and_(keep, pc.fill_null(pc.equal(col, pa.scalar(domain_value, col.type)), False))
        self._index = np.flatnonzero(np.asarray(keep.to_numpy(zero_copy_only=False), bool))
        self.filtered = int(len(self._ds) - len(self._index))
        self._groups = None
        if group_field is not None:
            ids = _hf_column(self._ds, group_field, self.domain).to_pylist()
            self._groups = np.asarray([group_hash(ids[i], f"{self.domain}:{i}")
                                       for i in self._index], np.uint64)
        where = f"HF dataset {path!r}" + (f" where {domain_field} == {domain_value!r}"
                                          if domain_field else "")
        _require_docs(len(self._index), self.domain, where)

    def group_keys(self):
        return self._groups

    def fingerprint(self):
        return {"kind": "hf", "dataset": self._ds._fingerprint,
                "files": file_stats([f["filename"] for f in self._ds.cache_files]),
                "text_field": self.text_field, "domain_field": self.domain_field,
                "domain_value": self.domain_value, "min_chars": self.min_chars,
                "group_field": self.group_field, "docs": len(self)}

    def __len__(self):
        return len(self._index)

    def __getitem__(self, index):
        row = self._ds[int(self._index[int(index)])]
        value = row
        for part in self.text_field.split("."):
            value = value[part]
        return value


def hf_column_sources(path: str | Sequence[str], domain_field: str, *, text_field: str = "text",
                      domains: Sequence[str] | None = None, **kwargs: Any) -> dict[str, HFSource]:
    """One :class:`HFSource` per value of ``domain_field`` (sorted), e.g. the Pile's
    ``meta.pile_set_name`` or SlimPajama's ``meta.redpajama_set_name``.

    ``domains`` keeps a subset (an unknown value is an error naming it). The
    dataset is loaded once and shared by the domains.
    """
    domain = f"{path}:{domain_field}"
    ds = kwargs.pop("dataset", None) or load_hf_dataset(
        path, domain=domain, split=kwargs.pop("split", "train"), cache_dir=kwargs.pop("cache_dir", None))
    values = sorted(v for v in set(_hf_column(ds, domain_field, domain).to_pylist()) if v is not None)
    if domains is not None:
        unknown = sorted(set(domains) - set(map(str, values)))
        if unknown:
            raise DataError(f"HF dataset {path!r}: no rows with {domain_field} in {unknown}; "
                            f"values: {values}")
        values = [v for v in values if str(v) in set(domains)]
    return {str(v): HFSource(path, domain=str(v), text_field=text_field, domain_field=domain_field,
                             domain_value=v, dataset=ds, **kwargs) for v in values}
