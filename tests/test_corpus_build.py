"""Corpus builder on a tiny fake download cache (no network): determinism, no-overwrite,
missing sources reported while the build carries on, atomic output, CLI."""

import hashlib
import io
import json
import zipfile

import pytest

from mixjax.cli import main as mixjax_main
from mixjax.data.corpus import CorpusExistsError, build, corpus_dir, load_manifest
from mixjax.data.corpus.build import balance, normalize, split_doc
from mixjax.data.corpus.catalogue import Source
from mixjax.data.corpus.extract_pypi import _zip_files
from mixjax.data.corpus.fetch import Archive
from mixjax.data.corpus.recipes import Recipe


def _texts(paths):
    for name, raw in _zip_files(paths[0], r"\.txt$"):
        yield name[:-4], raw.decode()


def _broken(paths):
    raise RuntimeError("bad member")
    yield  # pragma: no cover


def _write_wheel(root, dist, version, docs):
    (root / "pypi").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "pypi" / f"{dist}-{version}-py3-none-any.whl", "w") as z:
        for name, text in docs.items():
            z.writestr(f"{dist}/{name}.txt", text)


def _words(seed, n):
    return " ".join(f"w{(seed * 7919 + i * 104729) % 997}" for i in range(n))


@pytest.fixture
def fake(tmp_path):
    """A cache with three small fake wheels and a catalogue/recipe using them plus one absent package."""
    cache = tmp_path / "cache"
    _write_wheel(cache, "alpha", "1.0", {f"a{i}": f"Alpha doc {i}\r\n{_words(i, 40 + 13 * i)}  \n\n\n\n\nend" for i in range(30)})
    _write_wheel(cache, "beta", "2.0", {f"b{i}": f"Beta {i} é\n{_words(100 + i, 25)}" for i in range(50)})
    _write_wheel(cache, "gamma", "0.1", {f"g{i}": "\n".join(_words(200 + i, 30) for _ in range(12)) for i in range(8)})
    sources = {
        "alpha": Source("alpha", "one", (Archive("pypi", "alpha", "1.0"),), _texts, "MIT", "Alpha texts."),
        "beta": Source("beta", "one", (Archive("pypi", "beta", "2.0"),), _texts, "MIT", "Beta texts."),
        "gamma": Source("gamma", "two", (Archive("pypi", "gamma", "0.1"),), _texts, "CC0-1.0", "Gamma texts."),
        "absent": Source("absent", "two", (Archive("pypi", "absent-pkg", "9.9"),), _texts, "MIT", "Never cached."),
        "ghost": Source("ghost", "three", (Archive("npm", "@x/ghost", "1.0.0"),), _texts, "MIT", "Never cached."),
        "broken": Source("broken", "one", (Archive("pypi", "beta", "2.0"),), _broken, "MIT", "Extractor fails."),
    }
    recipe = Recipe("fakepile", {"one": ("alpha", "beta"), "two": ("gamma", "absent")},
                    cap_bytes=4000, max_doc_bytes=600, seed=3)
    return cache, sources, recipe


def _build(fake, out, **kw):
    cache, sources, recipe = fake
    kw.setdefault("recipe", recipe)
    return build("fakepile", out_dir=out, cache_dir=cache, download=False, progress=False, sources=sources, **kw)


def _digest_tree(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_cache_gives_byte_identical_output(fake, tmp_path):
    cache = fake[0]
    _build(fake, tmp_path / "out1")  # cold: runs the extractors
    assert list((cache / "extracted").glob("alpha-*.jsonl"))
    _build(fake, tmp_path / "out2")  # warm: extraction cache
    for f in (cache / "extracted").iterdir():
        f.unlink()
    _build(fake, tmp_path / "out3")  # cold again
    d1 = _digest_tree(tmp_path / "out1")
    assert set(d1) == {"one.jsonl", "two.jsonl", "manifest.json", "NOTICE"}
    assert d1 == _digest_tree(tmp_path / "out2") == _digest_tree(tmp_path / "out3")


def test_seed_changes_the_draw_but_not_the_format(fake, tmp_path):
    cache, sources, recipe = fake
    _build(fake, tmp_path / "s3")
    _build(fake, tmp_path / "s4", recipe=Recipe("fakepile", recipe.domains, cap_bytes=4000, max_doc_bytes=600, seed=4))
    assert (tmp_path / "s3" / "one.jsonl").read_bytes() != (tmp_path / "s4" / "one.jsonl").read_bytes()


def test_manifest_counts_checksums_and_balance(fake, tmp_path):
    out = tmp_path / "out"
    report = _build(fake, out)
    m = load_manifest(out)
    one = m["domains"]["one"]
    assert hashlib.sha256((out / "one.jsonl").read_bytes()).hexdigest() == one["sha256"]
    docs = [json.loads(line) for line in open(out / "one.jsonl", encoding="utf-8")]
    assert len(docs) == one["documents"] == report.domains["one"]["documents"]
    assert sum(len(d["text"].encode()) for d in docs) == one["bytes"]
    assert one["bytes"] >= 4000 and one["bytes"] < 4000 + 600  # cap reached, overshoot < one doc
    a, b = one["sources"]["alpha"]["bytes"], one["sources"]["beta"]["bytes"]
    assert abs(a - b) <= 600  # byte-balanced: never more than one doc apart
    assert all(len(d["text"].encode()) <= 600 for d in docs)
    assert all("\r" not in d["text"] and "\n\n\n\n" not in d["text"] for d in docs)
    assert m["sources"]["alpha"]["inputs"] == ["alpha-1.0-py3-none-any.whl"]
    wheel = fake[0] / "pypi" / "alpha-1.0-py3-none-any.whl"
    assert m["sources"]["alpha"]["input_sha256"] == {wheel.name: hashlib.sha256(wheel.read_bytes()).hexdigest()}
    assert "[alpha]" in (out / "NOTICE").read_text()


def test_missing_source_is_reported_and_the_build_carries_on(fake, tmp_path, capsys):
    cache, sources, recipe = fake
    recipe = Recipe("fakepile", {"one": ("alpha", "beta", "broken"), "two": ("gamma", "absent"), "three": ("ghost",)},
                    cap_bytes=4000, max_doc_bytes=600)
    out = tmp_path / "out"
    r = _build(fake, out, recipe=recipe)
    assert set(r.missing) == {"absent", "ghost", "broken"}
    assert "absent-pkg==9.9" in r.missing["absent"] and "@x/ghost@1.0.0" in r.missing["ghost"]
    assert "bad member" in r.missing["broken"]
    err = capsys.readouterr().err
    for name in ("absent", "ghost", "broken"):
        assert f"'{name}'" in err
    # the rest was built; 'two' reached its cap from gamma alone but says what it lacks; 'three' is empty
    m = load_manifest(out)
    assert set(m["domains"]) == {"one", "two"} and not (out / "three.jsonl").exists()
    assert "absent" in m["incomplete_domains"]["two"] and "EMPTY" in m["short_domains"]["three"]
    assert "two" in r.incomplete and "three" in r.short
    assert set(m["missing_sources"]) == {"absent", "ghost", "broken"}
    # a domain below its cap because a source is missing is called short, naming the source
    small = Recipe("fakepile", {"two": ("gamma", "absent")}, cap_bytes=10**6, max_doc_bytes=600)
    r2 = _build(fake, tmp_path / "out2", recipe=small)
    assert "short" in r2.short["two"] and "absent" in r2.short["two"]
    assert m["domains"]["two"]["sources"]["gamma"]["documents"] > 0


def test_never_overwrites_a_finished_corpus(fake, tmp_path):
    out = tmp_path / "out"
    _build(fake, out)
    before = _digest_tree(out)
    cache, sources, recipe = fake
    other = Recipe("fakepile", recipe.domains, cap_bytes=2000, max_doc_bytes=600)
    with pytest.raises(CorpusExistsError, match="overwrite"):
        _build(fake, out, recipe=other)
    assert _digest_tree(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dir left behind
    _build(fake, out, recipe=other, overwrite=True)
    assert _digest_tree(out) != before and load_manifest(out)["cap_bytes_per_domain"] == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]


def test_refuses_a_foreign_nonempty_directory(fake, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CorpusExistsError, match="not a corpus directory"):
        _build(fake, out)
    with pytest.raises(CorpusExistsError, match="even with overwrite"):  # e.g. `--out ~ --overwrite`
        _build(fake, out, overwrite=True)
    (out / "manifest.json").write_text("{}")  # a manifest does not make a user's folder a corpus
    with pytest.raises(CorpusExistsError, match="even with overwrite"):
        _build(fake, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_unknown_source_or_unshippable_source_fails_before_any_work(fake, tmp_path):
    cache, sources, recipe = fake
    with pytest.raises(KeyError, match="nope"):
        _build(fake, tmp_path / "o", recipe=Recipe("x", {"one": ("nope",)}, cap_bytes=10, max_doc_bytes=100))
    private = dict(sources, alpha=Source("alpha", "one", sources["alpha"].archives, _texts, "x", "x", redistributable=False))
    with pytest.raises(ValueError, match="alpha"):
        build("x", out_dir=tmp_path / "o", cache_dir=cache, download=False, progress=False, sources=private,
              recipe=Recipe("x", {"one": ("alpha",)}, cap_bytes=10, max_doc_bytes=100, shipped=True))
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- pure helpers

def test_normalize():
    assert normalize("\n\na  \r\nb\r\rc\n\n\n\n\n\nd \n\n") == "a\nb\n\nc\n\n\nd"


@pytest.mark.parametrize("limit", [16, 50, 200])
def test_split_doc_respects_the_limit_and_keeps_the_text(limit):
    text = "\n".join(("é" * (i % 23)) + f"line {i}" for i in range(60)) + "\n" + "x" * 130
    parts = split_doc(text, limit)
    assert all(0 < len(p.encode()) <= limit for p in parts)
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")


def test_balance_takes_from_the_poorest_source():
    pools = {"big": [{"id": f"b{i}", "bytes": 100} for i in range(50)],
             "small": [{"id": f"s{i}", "bytes": 10} for i in range(20)]}
    got = balance(pools, cap_bytes=600, seed=0, domain="d")
    by = {"big": 0, "small": 0}
    for d in got:
        by["big" if d["id"][0] == "b" else "small"] += d["bytes"]
    assert by["small"] == 200  # exhausted: all 20 small docs taken
    assert by["big"] + by["small"] >= 600 and by["big"] == 400
    assert balance(pools, cap_bytes=None, seed=0, domain="d").__len__() == 70


# ---------------------------------------------------------------- entry points

def test_corpus_dir_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mixjax data build mixpile"):
        corpus_dir("mixpile")
    with pytest.raises(KeyError, match="known"):
        corpus_dir("no-such-corpus")
    assert (corpus_dir("mixpile-tiny") / "manifest.json").is_file()


def test_cli_info_and_refused_rebuild(fake, tmp_path, capsys, monkeypatch):
    assert mixjax_main(["data", "info", "mixpile-tiny", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "conversation" in out and "checksums verified" in out
    assert mixjax_main(["data", "info", "mixpile-tiny", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    m = load_manifest(corpus_dir("mixpile-tiny"))
    for dom, v in stats["domains"].items():
        assert v["tokens"] == m["domains"][dom]["bytes"] + m["domains"][dom]["documents"]
        assert sum(s["documents"] for s in v["splits"].values()) == v["documents"]
    _build(fake, tmp_path / "built")
    monkeypatch.setenv("MIXJAX_DATA_DIR", str(tmp_path))
    (tmp_path / "mixpile").mkdir()
    (tmp_path / "mixpile" / "manifest.json").write_text("{}")
    assert mixjax_main(["data", "build", "mixpile", "--offline", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_failed_download_names_the_package_and_the_registry_error(fake, tmp_path, monkeypatch):
    """download=True with a registry client that fails (a fake `npm` on PATH): no network used."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "npm").write_text("#!/bin/sh\necho 'npm error 404 Not Found - GET https://registry/@x%2fghost' >&2\nexit 1\n")
    (bindir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    cache, sources, recipe = fake
    r = build("fakepile", out_dir=tmp_path / "out", cache_dir=cache, download=True, progress=False, sources=sources,
              recipe=Recipe("fakepile", {"one": ("alpha",), "three": ("ghost",)}, cap_bytes=1000, max_doc_bytes=600))
    assert "@x/ghost@1.0.0" in r.missing["ghost"] and "404 Not Found" in r.missing["ghost"]
    assert (tmp_path / "out" / "one.jsonl").is_file()
    assert not list((cache / "npm").iterdir())  # no partial download left in the cache


def test_optional_generated_source_is_skipped_then_used(fake, tmp_path):
    from mixjax.data.corpus.mathgen import read_artifact
    cache, sources, _ = fake
    gen = Source("gen", "one", (), read_artifact, "Apache-2.0", "Generated.", optional=True,
                 artifact="generated/gen.jsonl", how_to_get="run the generator")
    recipe = Recipe("fakepile", {"one": ("alpha", "gen")}, cap_bytes=3000, max_doc_bytes=600)
    srcs = dict(sources, gen=gen)
    r = build("f", out_dir=tmp_path / "a", cache_dir=cache, download=False, progress=False, sources=srcs, recipe=recipe)
    assert r.missing == {} and "run the generator" in r.skipped["gen"]
    assert load_manifest(tmp_path / "a")["skipped_optional_sources"] == ["gen"]
    (cache / "generated").mkdir()
    (cache / "generated" / "gen.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "text": f"Q: {i}+1?\nA: {i + 1}"}) + "\n" for i in range(200)))
    r = build("f", out_dir=tmp_path / "b", cache_dir=cache, download=False, progress=False, sources=srcs, recipe=recipe)
    assert r.skipped == {} and load_manifest(tmp_path / "b")["domains"]["one"]["sources"]["gen"]["documents"] > 0
    (cache / "generated" / "gen.jsonl").write_text('{"id": "x", "text": "ok"}\nnot json\n')  # new content: re-extracted
    r = build("f", out_dir=tmp_path / "c", cache_dir=cache, download=False, progress=False, sources=srcs, recipe=recipe)
    assert "gen.jsonl, line 2" in r.missing["gen"]
