"""benchmarks/device_check.sh --smoke runs end to end on the CPU and reports (a), (b) and (c)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_smoke(tmp_path):
    out = tmp_path / "dc.json"
    env = dict(os.environ, PYTHON=sys.executable, DEVICE_CHECK_JSON=str(out), OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--smoke"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for tag in ("(a) training img/s", "(b) pseudo label s/img", "(c) τ=0.25 label agreement"):
        assert tag in r.stdout
    res = json.loads(out.read_text())
    assert res["smoke"] and res["device"] == "cpu" and res["precision"] == "fp32"
    assert res["train"]["ours_img_s"] > 0 and res["train"]["authors_img_s"] > 0
    assert res["pseudo"]["ours_s"] > 0 and res["pseudo"]["keepall_s"] > 0
    # fp32 fused refinement vs the authors' keep-all algorithm: the same labels up to float rounding
    assert res["agreement_tau025"] >= 0.999
