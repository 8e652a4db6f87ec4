"""Corpus build time: cold extraction vs warm (extraction-cached) rebuild, side by side.

    python benchmarks/bench_corpus_build.py [--corpus mixpile] [--cache-dir DIR] [--download]

Cold = the archives are cached but nothing is extracted yet (every extractor runs, groff
renders every man page); with --download the cache starts empty, so downloads are timed too.
Warm = the same build again over the filled cache (the `mixjax data build NAME --overwrite`
case). Target: warm < 60 s on 2 cores. Also checks that both outputs are byte-identical.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import tempfile
import time
from pathlib import Path

from mixjax.data.corpus import build
from mixjax.data.corpus.fetch import cache_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="mixpile")
    ap.add_argument("--cache-dir", default=None, help="a filled download cache (default $MIXJAX_CACHE_DIR)")
    ap.add_argument("--download", action="store_true", help="start from an empty cache (needs the registries)")
    args = ap.parse_args()
    src = cache_dir(args.cache_dir)
    with tempfile.TemporaryDirectory() as work:
        cache = Path(work) / "cache"
        if not args.download:  # hard-link the archives (and generated inputs), not the extraction cache
            for sub in ("deb", "pypi", "npm", "generated"):
                if (src / sub).is_dir():
                    for f in (src / sub).rglob("*.jsonl" if sub == "generated" else "*"):
                        if f.is_file() and not f.name.startswith("."):
                            dst = cache / f.relative_to(src)
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            try:
                                os.link(f, dst)
                            except OSError:
                                shutil.copy2(f, dst)
        t0 = time.perf_counter()
        build(args.corpus, out_dir=Path(work) / "cold", cache_dir=cache, download=args.download, progress=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        build(args.corpus, out_dir=Path(work) / "warm", cache_dir=cache, download=False, progress=False)
        warm = time.perf_counter() - t0
        cmp = filecmp.dircmp(Path(work) / "cold", Path(work) / "warm")
        same = not (cmp.diff_files or cmp.left_only or cmp.right_only) and all(
            filecmp.cmp(Path(work) / "cold" / f, Path(work) / "warm" / f, shallow=False) for f in cmp.common_files)
    label = "cold (downloads + extraction)" if args.download else "cold (extraction, archives cached)"
    print(f"{args.corpus}: {label} {cold:.1f} s | warm rebuild {warm:.1f} s | ratio cold/warm {cold / warm:.1f}x "
          f"| warm < 60 s: {'yes' if warm < 60 else 'NO'} | outputs byte-identical: {'yes' if same else 'NO'} "
          f"| cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
