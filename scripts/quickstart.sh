#!/usr/bin/env bash
# The default experiment: creates .venv (if needed), installs mixjax into it with
# `pip install -e .`, then trains the quickstart LM with the uniform and the
# temperature mixture on mixpile-tiny and writes a comparison table + bar chart.
#   scripts/quickstart.sh [--out runs/quickstart] [--steps 300] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python experiments/quickstart.py "$@"
