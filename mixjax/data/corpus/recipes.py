"""Corpus recipes: which sources feed which domain, per-domain byte caps, chunk size, seed.

========== ================== ========================= =====================================
name       domains            cap per domain            notes
========== ================== ========================= =====================================
mixpile-tiny 8                250,000 B (text bytes)    ships with the package; no BBC, no
                                                          generated math; docs cut at 1.5 kB
mixpile      8                3,500,000 B               the default experiment corpus (~27 MB)
mixpile-full 10 (+encyclopedia, none (everything)       every source, BBC included (build-time
             +speeches)                                 only, never shipped)
========== ================== ========================= =====================================

Split floors (``split_floors``, see :mod:`mixjax.data.splits`): validation and test each hold
>= 16 source-grouped units and >= 16 KB per domain in mixpile-tiny, >= 16 units and >= 128 KB
in mixpile and mixpile-full. The tiny recipe cuts documents at 1.5 kB so that 16 units cost
~24 KB per split and about 80% of every domain stays for training.

Inside a domain the sources are byte-balanced (see ``build.balance``): the next document
comes from the source with the fewest bytes taken so far, until the cap.
"""

from __future__ import annotations

import dataclasses

DOMAINS = ("code", "tech_docs", "legal", "math", "science", "news", "literature", "conversation")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    domains: dict  # domain -> tuple of source names (see catalogue.SOURCES)
    cap_bytes: int | None  # per-domain cap on UTF-8 text bytes; None = take everything
    max_doc_bytes: int  # longer docs are cut at line boundaries into parts
    seed: int = 0
    shipped: bool = False  # True: lives in the package; only redistributable sources allowed
    description: str = ""
    # Minimum size of the validation and of the test split of every domain (mixjax.data.splits):
    # {"min_docs": source-grouped units, "min_bytes": UTF-8 bytes}; written to the manifest.
    split_floors: dict | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for srcs in self.domains.values() for s in srcs)


_DEFAULT = {
    "code": ("python-stdlib", "c-headers"),
    "tech_docs": ("python-docs", "man-pages"),
    "legal": ("scancode-licenses",),
    "math": ("metamath", "deepmind-math", "champ"),
    "science": ("wiki-science", "brown-learned"),
    "news": ("bbc-news", "brown-press"),
    "literature": ("austen", "kjv", "milton", "moby-dick", "brown-fiction"),
    "conversation": ("spamassassin-ham", "shakespeare", "fortunes", "chatterbot"),
}

CORPORA: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        "mixpile-tiny",
        {**_DEFAULT, "math": ("metamath", "champ"), "news": ("brown-press",)},
        cap_bytes=250_000, max_doc_bytes=1_536, shipped=True,
        description="8 domains x ~0.25 MB, shipped with the package (tests, quickstart)",
        split_floors={"min_docs": 16, "min_bytes": 16_384},
    ),
    Recipe(
        "mixpile", dict(_DEFAULT), cap_bytes=3_500_000, max_doc_bytes=65_536,
        description="8 domains x ~3.5 MB (~27 MB), built by `mixjax data build mixpile`",
        split_floors={"min_docs": 16, "min_bytes": 131_072},
    ),
    Recipe(
        "mixpile-full", {**_DEFAULT, "encyclopedia": ("wiki-other",), "speeches": ("sotu",)},
        cap_bytes=None, max_doc_bytes=65_536,
        description="every available source, 10 domains (~113 MB; ~115 MB with generated math)",
        split_floors={"min_docs": 16, "min_bytes": 131_072},
    ),
]}
