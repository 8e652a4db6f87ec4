#!/usr/bin/env bash
# Runs the whole test suite in the project's virtual environment (.venv),
# creating it and installing mixjax with its test extras first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,dg,tokenizers,hf,wandb,tensorboard,search]"
exec .venv/bin/python -m pytest -q -n "${MIXJAX_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
