#!/usr/bin/env bash
# Set up (first run) and build the book on the embedded tiny profile: every notebook is executed.
# Output: _build/html/index.html. Fails on any notebook error or Sphinx warning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# show the team's real VOC sample photographs in chapter 1 when the shared folder is beside the checkout
if [ -z "${TRANSCAM_VOC_SAMPLE:-}" ] && [ -d ../shared/data/voc2012_sample/VOCdevkit/VOC2012 ]; then
  export TRANSCAM_VOC_SAMPLE="$(cd ../shared/data/voc2012_sample/VOCdevkit/VOC2012 && pwd)"
fi
export TRANSCAM_PROFILE=${TRANSCAM_PROFILE:-tiny}
start=$(date +%s)
.venv/bin/jupyter-book build . --warningiserror --keep-going "$@"
echo "[book] built in $(( $(date +%s) - start )) s -> _build/html/index.html"
