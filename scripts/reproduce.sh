#!/usr/bin/env bash
# Set up (if needed) and reproduce every figure and table: the notebooks under a profile (default quick,
# 2 CPU cores), executed by papermill into runs/<time>-<profile>/, figures into the repository's figures/.
# Extra arguments go to `eclipse reproduce` (e.g. --only 04 05, -p attacks '[lsp]').
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eclipse reproduce --profile "${1:-quick}" --figures-dir figures "${@:2}"
