"""On-disk cache of what a run tokenizes up front: token counts and eval sets.

A run tokenizes every training document once to count tokens (the
``natural`` mixture and the importance weights need them) and packs the eval
sets. With a real tokenizer (SentencePiece, tiktoken, HF) that is the slow part
of start-up, so the results are stored under ``<cache_dir>/tokenized/<key>.npz``
where ``key = sha256(what, tokenizer.checksum(), source fingerprints, args)``.
A source's fingerprint (``DomainSource.fingerprint()``) holds its files' paths,
sizes and modification times, so an edited file misses the cache; a source
without one (in-memory lists, tfds) is never cached. The byte tokenizer is not
cached (tokenizing bytes costs less than reading the file back).

The training stream itself is tokenized on the fly by the sampler (grain),
so it is not cached here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping

import numpy as np


def default_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MIXJAX_CACHE_DIR") or
                        os.path.join(os.path.expanduser("~"), ".cache", "mixjax"))


def resolve_dir(cache_dir: str | None) -> pathlib.Path | None:
    """``None`` -> the default directory; ``""`` -> no cache."""
    if cache_dir == "":
        return None
    return pathlib.Path(cache_dir) if cache_dir is not None else default_dir()


def cache_key(what: str, tokenizer, sources: Mapping[str, Any], **args: Any) -> str | None:
    """The key of ``what`` over ``sources``, or None when something is not fingerprintable."""
    if tokenizer.name == "byte":
        return None
    prints = {}
    for name, src in sources.items():
        fp = src.fingerprint() if hasattr(src, "fingerprint") else None
        if fp is None:
            return None
        prints[name] = fp
    blob = json.dumps({"what": what, "tokenizer": tokenizer.checksum(), "sources": prints,
                       "args": args}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_arrays(cache_dir: pathlib.Path | None, key: str | None,
                  compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """``(arrays, hit)``: read ``<key>.npz`` or compute and store it (atomically)."""
    if cache_dir is None or key is None:
        return compute(), False
    path = cache_dir / "tokenized" / f"{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            names = json.loads(str(z["__names__"]))
            return {n: z[f"a{i}"] for i, n in enumerate(names)}, True
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, __names__=np.asarray(json.dumps(list(out))),
                 **{f"a{i}": np.asarray(v) for i, v in enumerate(out.values())})
    os.replace(tmp, path)   # concurrent runs: the last complete file wins, never a partial one
    return out, False
