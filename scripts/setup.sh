#!/usr/bin/env bash
# Create ./.venv and install the pinned requirements plus this package (editable), once.
# Re-runs are no-ops until requirements.txt or pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.installed
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
echo "[setup] creating .venv and installing requirements (first run takes a few minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip || true
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python - <<'PY'
import torch, torchvision, timm, pydensecrf
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, pydensecrf ok")
PY
touch "$stamp"
