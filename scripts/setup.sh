#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with eclipse (editable) and its notebook/test
# extras, plus a Jupyter kernel named "eclipse". Re-running is cheap when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.eclipse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[notebooks,test]"
  touch "$stamp"
fi
.venv/bin/python -m ipykernel install --sys-prefix --name eclipse --display-name "Python (eclipse)" >/dev/null
