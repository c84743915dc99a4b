#!/usr/bin/env bash
# Set up (if needed) and run the reproduction under a profile (default: quick, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eclipse table --profile "${1:-quick}" "${@:2}"
