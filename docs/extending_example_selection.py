"""Worked example of docs/extending.md, section 6: a scorer and its selection file.

``quality(doc)``: 0 for documents whose share of letters is below one half (markup, tables,
numbers), else a weight growing with the length, ``min(len / 2000, 4)``. ``write_selection``
scores every document of a corpus (or any ``{domain: source}``) and writes the file that
``data.selection.path`` reads (mixjax.data.selection).
"""

from __future__ import annotations

from mixjax.data import selection
from mixjax.data.spec import resolve_sources


def quality(doc: str) -> float:
    letters = sum(c.isalpha() for c in doc) / max(len(doc), 1)
    return 0.0 if letters < 0.5 else min(len(doc) / 2000, 4.0)


def write_selection(corpus, out: str) -> str:
    """Scores ``corpus`` (a name, a directory of <domain>.jsonl, a spec or sources); returns
    the file's sha256 (what the run records)."""
    weights = selection.score(resolve_sources(corpus), quality)
    return selection.write(out, weights, scorer="quality-v1")
