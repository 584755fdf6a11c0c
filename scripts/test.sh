#!/usr/bin/env bash
# Set up (first run) and run the whole test-suite: unit tests, golden equivalence, notebooks (nbval).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
