"""Regenerate tests/file_durations.json from a JUnit XML report of a whole test run.

    ./scripts/test.sh --junitxml=/tmp/junit.xml
    .venv/bin/python scripts/test_durations.py /tmp/junit.xml

The test command hands whole files to its 2 workers (``--dist loadfile``); tests/conftest.py
orders the files longest first from this table so that no long file starts last and leaves
one worker idle at the end of the run (longest-processing-time-first scheduling). A file
missing from the table counts as short; the table only steers the order, never what runs.
"""

import collections
import json
import pathlib
import sys
import xml.etree.ElementTree as ET

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "file_durations.json"


def file_seconds(junit_xml: str) -> dict[str, float]:
    seconds: dict[str, float] = collections.Counter()
    for case in ET.parse(junit_xml).iter("testcase"):
        # classname "tests.fault.test_fault_kill" -> "tests/fault/test_fault_kill.py"
        path = case.get("classname", "").split(".")
        while path and not path[-1].startswith("test_"):
            path.pop()                                   # drop a test class name
        if path:
            seconds["/".join(path) + ".py"] += float(case.get("time", 0.0))
    return dict(seconds)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python scripts/test_durations.py JUNIT_XML", file=sys.stderr)
        return 2
    table = {f: round(s, 1) for f, s in sorted(file_seconds(argv[0]).items(), key=lambda x: -x[1])}
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT} ({len(table)} files, {sum(table.values()):.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
