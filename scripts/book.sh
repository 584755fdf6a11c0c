#!/usr/bin/env bash
# Set up (first run) and build the book on the embedded tiny profile: every notebook is executed.
# Output: _build/html/index.html. Fails on any notebook error or Sphinx warning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# chapter 1 shows the real VOC sample photographs shipped in tests/data (see tests/data/README.md)
export TRANSCAM_VOC_SAMPLE="${TRANSCAM_VOC_SAMPLE:-$PWD/tests/data/voc2012_sample/VOCdevkit/VOC2012}"
export TRANSCAM_PROFILE=${TRANSCAM_PROFILE:-tiny}
start=$(date +%s)
.venv/bin/jupyter-book build . --warningiserror --keep-going "$@"
echo "[book] built in $(( $(date +%s) - start )) s -> _build/html/index.html"
