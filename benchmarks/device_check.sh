#!/usr/bin/env bash
# One device check (issue: speed), ratios measured in one run; <= 8 minutes on one GPU.
#   benchmarks/device_check.sh            # on the GPU machine: (a) training img/s, (b) pseudo-label
#                                         # s/img, (c) label agreement; JSON in device_check.json
#   benchmarks/device_check.sh --smoke    # on any CPU in seconds: the script is known to work
# Extra arguments go to benchmarks/device_check.py (e.g. --precision fp16, --skip train).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
out="${DEVICE_CHECK_JSON:-device_check.json}"
exec timeout "${DEVICE_CHECK_TIMEOUT:-480}" "$python" "$here/device_check.py" --json "$out" "$@"
