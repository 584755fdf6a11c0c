#!/usr/bin/env bash
# Set up (first run) and run the whole test-suite:
#   0. notebook code formatted to 80 columns and linted (ruff, pinned in requirements.txt)
#   1. unit tests, golden equivalence with the authors' code, CLI/resume tests  (pytest tests/)
#   2. every notebook executed in the tiny profile                               (pytest --nbval-lax notebooks/)
#   3. the book built with warnings as errors, then checked in headless Chromium (scripts/book.sh + tests/test_book_html.py)
# With arguments, they go to pytest instead (e.g. `bash scripts/test.sh tests/test_models.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# chapters 1 and 4 show the real VOC / COCO sample photographs shipped in tests/data (tests/data/README.md)
export TRANSCAM_VOC_SAMPLE="${TRANSCAM_VOC_SAMPLE:-$PWD/tests/data/voc2012_sample/VOCdevkit/VOC2012}"
export TRANSCAM_COCO_SAMPLE="${TRANSCAM_COCO_SAMPLE:-$PWD/tests/data/coco128_seg/images/train2017}"
PY=.venv/bin/python
if [ $# -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
.venv/bin/ruff format --check notebooks/
.venv/bin/ruff check notebooks/
t0=$(date +%s)
"$PY" -m pytest -q -ra tests/ --ignore=tests/test_book_html.py
t1=$(date +%s)
"$PY" -m pytest -q -ra -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/
t2=$(date +%s)
bash scripts/book.sh
t3=$(date +%s)
"$PY" -m pytest -q -ra tests/test_book_html.py
t4=$(date +%s)
echo "[test] unit $((t1 - t0)) s, notebooks $((t2 - t1)) s, book $((t3 - t2)) s, browser $((t4 - t3)) s"
