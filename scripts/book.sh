#!/usr/bin/env bash
# Set up (first run) and build the book on the embedded tiny profile: every notebook is executed.
# Output: _build/html/index.html. Fails on any notebook error or Sphinx warning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# chapters 1 and 4 show the real VOC / COCO sample photographs shipped in tests/data (tests/data/README.md)
export TRANSCAM_VOC_SAMPLE="${TRANSCAM_VOC_SAMPLE:-$PWD/tests/data/voc2012_sample/VOCdevkit/VOC2012}"
export TRANSCAM_COCO_SAMPLE="${TRANSCAM_COCO_SAMPLE:-$PWD/tests/data/coco128_seg/images/train2017}"
export TRANSCAM_PROFILE=${TRANSCAM_PROFILE:-tiny}
start=$(date +%s)
.venv/bin/jupyter-book build . --warningiserror --keep-going "$@"
echo "[book] built in $(( $(date +%s) - start )) s -> _build/html/index.html"
