"""Fault-injection tests: the shared fakes live one directory up."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
