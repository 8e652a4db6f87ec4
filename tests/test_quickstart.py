"""The README's first command: experiments/quickstart.py end to end, shortened to 2 steps."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import quickstart  # noqa: E402


def test_quickstart_runs_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "qs"
    assert quickstart.main(["--out", str(out), "--steps", "2"]) == 0
    for name in ("results.md", "results.csv", "ppl_by_domain.png", "timing.json"):
        assert (out / name).is_file(), name
    table = (out / "results.md").read_text()
    assert "| code |" in table and "**uniform average**" in table
    # an existing --out is never replaced without --force
    assert quickstart.main(["--out", str(out), "--steps", "2"]) == 2
    assert "pass --force" in capsys.readouterr().err
