#!/usr/bin/env bash
# Set up (first run) and build the book on the embedded tiny profile: every notebook is executed.
# Output: _build/html/index.html. Fails on any notebook error or Sphinx warning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg TRANSCAM_PROFILE=${TRANSCAM_PROFILE:-tiny}
start=$(date +%s)
.venv/bin/jupyter-book build . --warningiserror --keep-going "$@"
echo "[book] built in $(( $(date +%s) - start )) s -> _build/html/index.html"
