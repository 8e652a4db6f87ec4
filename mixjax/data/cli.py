"""``mixjax data``: build and describe corpora.

    mixjax data build NAME [--overwrite] [--out DIR] [--cache-dir DIR] [--offline] [--mathgen]
    mixjax data info NAME|DIR [--sources] [--verify] [--split-seed S] [--json]
    mixjax data mathgen [--cache-dir DIR] [--bytes N]   (optional generated math input)
    mixjax data select NAME|DIR|SPEC.json --out FILE [--scorer length] [--arg K=V ...]
    mixjax data select NAME|DIR|SPEC.json --out FILE --method gio|ingenious --budget F
                       [--target T.jsonl] [--cache-dir DIR] [--arg k=1]
    mixjax data select NAME|DIR|SPEC.json --out FILE --method donod --budget F --model RUN_DIR
                       [--arg lr=X --arg seq_len=N --arg param_filter=RE --arg w_don=A --arg w_nod=B]
    mixjax data regroup NAME|DIR|SPEC.json --k K --out DIR [--svd D] [--seed S]
                                         (R&B regroup: k-means clusters as new domains)

``info`` counts tokens under the byte tokenizer (UTF-8 bytes + 1 EOS per document) and
documents per split with :mod:`mixjax.data.splits` (the split the sampler and eval sets use).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser, command_name: str = "data") -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    b = sub.add_parser("build", help="build a corpus into $MIXJAX_DATA_DIR/NAME (default ~/.cache/mixjax/corpora)")
    b.add_argument("name", help="corpus name: mixpile-tiny | mixpile | mixpile-full")
    b.add_argument("--overwrite", action="store_true", help="replace a finished corpus")
    b.add_argument("--out", default=None, help="output directory (default $MIXJAX_DATA_DIR/NAME)")
    b.add_argument("--cache-dir", default=None, help="download cache (default $MIXJAX_CACHE_DIR or ~/.cache/mixjax/downloads)")
    b.add_argument("--offline", action="store_true", help="use only archives already in the cache")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--mathgen", action="store_true",
                   help="first generate the optional DeepMind-math input into the cache if it is absent")
    i = sub.add_parser("info", help="documents, bytes, byte-tokenizer tokens and split sizes per domain")
    i.add_argument("name", help="corpus name or a directory of <domain>.jsonl files")
    i.add_argument("--sources", action="store_true", help="also list documents/bytes per source (from the manifest)")
    i.add_argument("--verify", action="store_true", help="check the manifest's sha256 checksums")
    i.add_argument("--split-seed", type=int, default=0, help="split seed (as in the data config; default 0)")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s = sub.add_parser("select", help="score every document with a built-in scorer and write a "
                                      "selection file (mixjax.data.selection; data.selection)")
    s.add_argument("name", help="corpus name, a directory of <domain>.jsonl files or a dataset-spec .json")
    s.add_argument("--out", required=True, help="the selection file to write")
    s.add_argument("--scorer", default="length", help="built-in scorer (default: length)")
    s.add_argument("--arg", action="append", default=[], metavar="K=V",
                   help="scorer argument, e.g. min_chars=200 (repeatable)")
    s.add_argument("--method", default=None, choices=("gio", "ingenious", "coreset", "donod"),
                   help="set-level selection (mixjax.data.subset_select): gio (toward "
                        "--target), ingenious (facility location per domain), coreset "
                        "(--scorer on k-means representatives, weights propagated) or donod "
                        "(mixjax.data.donod: one-step weight-norm change and step size of "
                        "--model per document, ranked by TOPSIS)")
    s.add_argument("--budget", default=None,
                   help="--method: fraction of the documents to select, in (0, 1]")
    s.add_argument("--target", default=None,
                   help="gio: the target set, a .jsonl file of {\"text\": ...} lines or a directory")
    s.add_argument("--model", default=None,
                   help="donod: the run dir whose latest checkpoint scores the documents")
    s.add_argument("--cache-dir", default=None,
                   help="--method: embedding (donod: per-document metric) cache (default $MIXJAX_CACHE_DIR/embeddings or "
                        "~/.cache/mixjax/embeddings)")
    r = sub.add_parser("regroup", help="cluster every document (TF-IDF [+ SVD] + k-means) into K new "
                                       "domains written as a corpus directory and spec.json "
                                       "(mixjax.data.regroup; R&B's regroup step)")
    r.add_argument("name", help="corpus name, a directory of <domain>.jsonl files or a dataset-spec .json")
    r.add_argument("--k", type=int, required=True, help="number of clusters (new domains), >= 2")
    r.add_argument("--out", required=True, help="output directory (new or empty)")
    r.add_argument("--svd", type=int, default=0, help="reduce TF-IDF to D dimensions (LSA) first; 0: no")
    r.add_argument("--seed", type=int, default=0, help="k-means / SVD seed (default 0)")
    r.add_argument("--max-features", type=int, default=50_000, help="TF-IDF vocabulary size")
    r.add_argument("--min-df", type=int, default=2, help="a term's minimum document frequency")
    r.add_argument("--n-init", type=int, default=3, help="k-means restarts")
    r.add_argument("--overwrite", action="store_true", help="replace the output of an earlier regroup")
    m = sub.add_parser("mathgen", help="generate the optional DeepMind-math input once into the download cache")
    m.add_argument("--cache-dir", default=None)
    m.add_argument("--bytes", type=int, default=None, help="text bytes to generate (default 2,000,000: ~3,000 documents)")
    m.add_argument("--seed", type=int, default=0)


def _resolve(name: str) -> Path:
    from mixjax.data.corpus import corpus_dir
    p = Path(name).expanduser()
    return p if p.is_dir() else corpus_dir(name)


def corpus_stats(path: Path, split_seed: int = 0, verify: bool = False) -> dict:
    """Per-domain documents, bytes, byte-tokenizer tokens and per-split document/token counts."""
    from mixjax.data import splits
    from mixjax.data.sources import group_hash
    from mixjax.data.spec import corpus_floors

    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    files = ([path / e["file"] for e in manifest["domains"].values()] if manifest
             else sorted(path.glob("*.jsonl")))
    if not files:
        raise FileNotFoundError(f"{path} holds no <domain>.jsonl files")
    out = {}
    floors = corpus_floors(str(path))
    for f in files:
        domain = f.stem
        lengths, groups, h = [], [], hashlib.sha256()
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                h.update(raw)
                try:
                    doc = json.loads(raw)
                    lengths.append(len(doc["text"].encode("utf-8")))
                    groups.append(group_hash(doc.get("id"), f"{f}:{n}"))
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"{f}, line {n}: not a {{\"text\": ...}} JSON document ({exc})") from None
        if verify and manifest and h.hexdigest() != manifest["domains"][domain]["sha256"]:
            raise ValueError(f"{f}: sha256 does not match manifest.json (file changed or truncated)")
        tokens = [b + 1 for b in lengths]  # byte tokenizer: UTF-8 bytes + 1 EOS per document
        groups = np.asarray(groups, np.uint64)
        idx = splits.split_indices(len(lengths), seed=split_seed, domain=domain, groups=groups,
                                   floors=floors, size_of=lambda i: lengths[i])
        out[domain] = {
            "documents": len(lengths), "bytes": sum(lengths), "tokens": sum(tokens),
            "splits": {s: {"documents": int(len(idx[s])), "units": len(set(groups[idx[s]].tolist())),
                           "bytes": int(sum(lengths[j] for j in idx[s])),
                           "tokens": int(sum(tokens[j] for j in idx[s]))}
                       for s in splits.SPLITS},
        }
        if manifest:
            out[domain]["sources"] = manifest["domains"][domain]["sources"]
    return {"path": str(path), "name": manifest["name"] if manifest else path.name, "domains": out,
            "split_floors": None if floors is None else {"min_docs": floors.min_docs, "min_bytes": floors.min_bytes},
            "manifest": manifest is not None, "verified": bool(verify and manifest)}


def _print_info(stats: dict, show_sources: bool) -> None:
    print(f"corpus {stats['name']}  ({stats['path']})")
    head = (f"{'domain':<14}{'docs':>8}{'bytes':>12}{'tokens':>12}{'train':>8}{'valid':>7}{'test':>7}"
            f"{'valid KB':>10}{'test KB':>9}{'train %':>9}")
    print(head)
    print("-" * len(head))
    tot = [0, 0, 0]
    for d, v in stats["domains"].items():
        sp = v["splits"]
        print(f"{d:<14}{v['documents']:>8}{v['bytes']:>12}{v['tokens']:>12}"
              f"{sp['train']['documents']:>8}{sp['validation']['documents']:>7}{sp['test']['documents']:>7}"
              f"{sp['validation']['bytes'] / 1024:>10.1f}{sp['test']['bytes'] / 1024:>9.1f}"
              f"{100 * sp['train']['bytes'] / max(v['bytes'], 1):>9.1f}")
        tot = [tot[0] + v["documents"], tot[1] + v["bytes"], tot[2] + v["tokens"]]
        if show_sources and "sources" in v:
            for s, c in v["sources"].items():
                print(f"  {s:<20}{c['documents']:>8}{c['bytes']:>12}   of {c['available_documents']} docs / "
                      f"{c['available_bytes'] / 1e6:.2f} MB available")
    print("-" * len(head))
    print(f"{'total':<14}{tot[0]:>8}{tot[1]:>12}{tot[2]:>12}")
    print("tokens = UTF-8 bytes + 1 EOS per document (byte tokenizer); splits: mixjax.data.splits, "
          f"default fractions{' ; checksums verified' if stats['verified'] else ''}")
    fl = stats.get("split_floors")
    if fl:
        print(f"split floors: validation and test each >= {fl['min_docs']} source-grouped units and "
              f">= {fl['min_bytes'] / 1024:.0f} KB per domain; train % = share of the domain's bytes")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        from mixjax.data.corpus import CorpusExistsError, build, mathgen
        from mixjax.data.corpus.build import BuildError
        from mixjax.data.corpus.fetch import cache_dir
        try:
            if args.mathgen and not (cache_dir(args.cache_dir) / mathgen.ARTIFACT).is_file():
                print(f"generated {mathgen.generate(cache_dir=args.cache_dir)}")
            r = build(args.name, overwrite=args.overwrite, out_dir=args.out, cache_dir=args.cache_dir,
                      download=not args.offline, progress=not args.no_progress)
        except (CorpusExistsError, KeyError) as exc:
            print(f"mixjax data build: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        except BuildError as exc:
            print(f"mixjax data build: {exc}", file=sys.stderr)
            return 1
        mb = sum(v["bytes"] for v in r.domains.values()) / 1e6
        docs = sum(v["documents"] for v in r.domains.values())
        print(f"built {r.name}: {len(r.domains)} domains, {docs} documents, {mb:.2f} MB text -> {r.path} "
              f"in {r.seconds:.1f} s")
        slow = sorted(r.source_seconds.items(), key=lambda kv: -kv[1])[:5]
        print("  slowest sources (fetch + extract, s): " + ", ".join(f"{s} {t:.1f}" for s, t in slow))
        for s, why in r.missing.items():
            print(f"  MISSING source {s}: {why}")
        for s in r.skipped:
            print(f"  skipped optional source {s}")
        for msg in [*r.short.values(), *r.incomplete.values()]:
            print(f"  {msg}")
        return 1 if r.missing else 0
    if args.data_command == "info":
        try:
            stats = corpus_stats(_resolve(args.name), split_seed=args.split_seed, verify=args.verify)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            print(f"mixjax data info: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            _print_info(stats, args.sources)
        return 0
    if args.data_command == "select":
        return _select(args)
    if args.data_command == "regroup":
        return _regroup(args)
    if args.data_command == "mathgen":
        from mixjax.data.corpus import mathgen
        path = mathgen.generate(cache_dir=args.cache_dir, nbytes=args.bytes, seed=args.seed)
        print(f"generated {path}")
        return 0
    raise ValueError(f"unknown data command {args.data_command!r}")


def _scorer_kwargs(items: list[str]) -> dict:
    """``--arg K=V`` values as Python literals (strings when they are not)."""
    import ast
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--arg {item!r}: want K=V")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _select(args: argparse.Namespace) -> int:
    """``mixjax data select``: every document of every domain scored, one selection file."""
    from mixjax.data import selection
    from mixjax.data.spec import resolve_sources
    if args.method is not None:
        return _select_subset(args)
    if args.scorer not in selection.SCORERS:
        raise KeyError(f"unknown scorer {args.scorer!r}; known: {', '.join(selection.SCORERS)}")
    kwargs = _scorer_kwargs(args.arg)
    sources = resolve_sources(_spec_or_name(args.name))
    weights = selection.score(sources, selection.SCORERS[args.scorer](**kwargs))
    sha = selection.write(args.out, weights,
                          scorer=f"{args.scorer}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    kept = sum(w > 0 for w in weights.values())
    print(f"{args.out}: {len(weights)} documents, {kept} with weight > 0, sha256 {sha}")
    return 0


def _select_subset(args: argparse.Namespace) -> int:
    """``mixjax data select --method``: a subset of the whole corpus (mixjax.data.subset_select).
    The arguments (budget, target set, method options) are checked before the corpus is read;
    on any error nothing is written."""
    import os
    from mixjax.data import selection, subset_select
    from mixjax.data.sources import DataError
    from mixjax.data.spec import resolve_sources
    budget = subset_select.check_budget(args.budget)
    if args.method == "donod":
        return _select_donod(args, budget)
    if args.model is not None:
        raise DataError(f"--model is for --method donod, not {args.method}")
    target = None
    if args.method == "gio":
        if args.target is None:
            raise DataError("--method gio needs --target (the target set)")
        target = subset_select.read_target(args.target)
        if len(target) < 2:
            raise DataError(f"target set {args.target!r} has {len(target)} document; GIO's "
                            "k-NN estimate needs at least 2")
    elif args.target is not None:
        raise DataError(f"--target is for --method gio, not {args.method}")
    k, scorer, scorer_name = 1, None, None
    if args.method == "coreset":   # --arg are the scorer's
        if args.scorer not in selection.SCORERS:
            raise KeyError(f"unknown scorer {args.scorer!r}; known: "
                           f"{', '.join(selection.SCORERS)}")
        kwargs = _scorer_kwargs(args.arg)
        scorer = selection.SCORERS[args.scorer](**kwargs)
        scorer_name = f"{args.scorer}({', '.join(f'{a}={v!r}' for a, v in kwargs.items())})"
    else:
        for item in args.arg:
            key, sep, value = item.partition("=")
            if key != "k" or not sep or not value.isdigit() or int(value) < 1:
                raise DataError(f"--arg {item!r}: --method {args.method} takes only "
                                "k=<int >= 1> (gio's neighbour)")
            k = int(value)
    cache = args.cache_dir or os.path.join(
        os.environ.get("MIXJAX_CACHE_DIR", os.path.expanduser("~/.cache/mixjax")), "embeddings")
    sources = resolve_sources(_spec_or_name(args.name))
    weights, info = subset_select.select_subset(sources, args.method, budget, target=target,
                                                cache_dir=cache, k=k, scorer=scorer)
    extra = (f", k={k}, target={args.target!r}" if args.method == "gio" else
             f", scorer={scorer_name}" if args.method == "coreset" else "")
    sha = selection.write(args.out, weights, scorer=f"{args.method}(budget={budget!r}{extra})",
                          default=0.0, complete=True)
    kept = sum(w > 0 for w in weights.values())
    what = ("scored (cluster representatives)" if args.method == "coreset" else "selected")
    print(f"{args.out}: {len(weights)} documents, {kept} with weight > 0; {what}: "
          f"{', '.join(f'{d} {n}' for d, n in info['selected'].items())}; "
          f"{info['embedded']} embedded, {info['cached']} from the cache; sha256 {sha}")
    return 0


DONOD_ARGS = {"lr": float, "seq_len": int, "param_filter": str, "w_don": float, "w_nod": float,
              "chunk": int}


def _select_donod(args: argparse.Namespace, budget: float) -> int:
    """``mixjax data select --method donod``: arguments checked before the model or corpus is
    read; nothing written on an error."""
    import math
    import os
    from mixjax.data import donod, selection
    from mixjax.data.sources import DataError
    from mixjax.data.spec import resolve_sources
    if args.model is None:
        raise DataError("--method donod needs --model (a run dir whose checkpoint scores the "
                        "documents)")
    if args.target is not None:
        raise DataError("--target is for --method gio, not donod")
    opts: dict = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        try:
            if not sep or key not in DONOD_ARGS:
                raise ValueError
            opts[key] = DONOD_ARGS[key](value)
            v = opts[key]
            bad = (v < 1 if key in ("seq_len", "chunk") else
                   not (math.isfinite(v) and v > 0) if key == "lr" else
                   not (math.isfinite(v) and v >= 0) if key in ("w_don", "w_nod") else False)
        except ValueError:
            bad = True
        if bad:
            raise DataError(f"--arg {item!r}: --method donod takes lr=<float > 0>, seq_len=<int >= "
                            "1>, param_filter=<regex>, w_don=<float >= 0>, w_nod=<float >= 0>, "
                            "chunk=<int >= 1>")
    weights = None
    if "w_don" in opts or "w_nod" in opts:
        weights = (opts.get("w_don", 0.5), opts.get("w_nod", 0.5))
        if sum(weights) <= 0:
            raise DataError(f"--arg w_don/w_nod: the TOPSIS weights {weights} sum to 0")
    model = donod.load_run_model(args.model)
    if "lr" in opts:
        model.lr = opts["lr"]
    if "param_filter" in opts:          # before the corpus is read
        import re

        from mixjax.mixing.grad_algebra import param_mask
        try:
            param_mask(model.params, opts["param_filter"])
        except (ValueError, re.error) as e:
            raise DataError(f"--arg param_filter={opts['param_filter']!r}: "
                            f"{str(e).replace('grads.param_filter ', '')}") from None
    cache = args.cache_dir or os.path.join(
        os.environ.get("MIXJAX_CACHE_DIR", os.path.expanduser("~/.cache/mixjax")), "embeddings")
    sources = resolve_sources(_spec_or_name(args.name))
    seq_len = opts.get("seq_len", 128)
    weights_out, info = donod.select_donod(
        sources, model, budget, cache_dir=cache, seq_len=seq_len,
        param_filter=opts.get("param_filter"), weights=weights, chunk=opts.get("chunk", 64))
    w_txt = "" if weights is None else f", w_don={weights[0]!r}, w_nod={weights[1]!r}"
    sha = selection.write(args.out, weights_out, default=0.0, complete=True,
                          scorer=f"donod(budget={budget!r}, model={args.model!r}, lr={model.lr!r}, "
                                 f"seq_len={seq_len}, param_filter={opts.get('param_filter')!r}"
                                 f"{w_txt})")
    kept = sum(w > 0 for w in weights_out.values())
    print(f"{args.out}: {len(weights_out)} documents, {kept} with weight > 0; selected: "
          f"{', '.join(f'{d} {n}' for d, n in info['selected'].items())}; "
          f"{info['computed']} scored, {info['cached']} from the cache; sha256 {sha}")
    return 0


def _spec_or_name(name: str):
    where = Path(name)
    return json.loads(where.read_text()) if where.suffix == ".json" and where.is_file() else name


def _regroup(args: argparse.Namespace) -> int:
    """``mixjax data regroup``: k-means clusters of every document as new domains."""
    from mixjax.data import regroup
    from mixjax.data.spec import resolve_sources
    opts = regroup.Options(k=args.k, seed=args.seed, svd=args.svd, max_features=args.max_features,
                           min_df=args.min_df, n_init=args.n_init)
    if opts.k < 2:                   # before the corpus is read
        opts.check(opts.k)
    r = regroup.regroup(resolve_sources(_spec_or_name(args.name)), args.out, opts,
                        overwrite=args.overwrite)
    docs = sum(c["documents"] for c in r.clusters.values())
    print(f"{r.out}: {len(r.clusters)} domains from {docs} documents in {r.seconds:.1f} s; "
          f"data.spec = {r.out / 'spec.json'}")
    for name, c in r.clusters.items():
        top = max(c["original_domains"].items(), key=lambda kv: kv[1])
        print(f"  {name}: {c['documents']:>6} docs {c['bytes'] / 1e6:7.2f} MB  "
              f"{100 * top[1] / c['documents']:3.0f}% {top[0]}  [{' '.join(c['top_terms'][:5])}]")
    return 0
