"""Two-process DDP training under torchrun (gloo on CPU): both ranks train, rank 0 alone writes,
and the parameters stay identical across ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(embed_dim=32, num_heads=2, channel_ratio=0.25, depth=12)

_SCRIPT = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")  # the run's start / end lines (rank 0) on stderr
from transcam_nb.config import get_profile
from transcam_nb.models.factory import build_model_for_profile
from transcam_nb.train import train_classifier
cfg = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
prof = get_profile("tiny", **cfg["profile"])
torch.manual_seed(100 + rank)  # a different start on each rank: DDP must broadcast rank 0's weights
model = build_model_for_profile(prof, verbose=False)
summary = train_classifier(prof, cfg["out"], model=model, resume=False, log_every=1, progress=False)
torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, os.path.join(cfg["out"], f"rank{rank}.pt"))
with open(os.path.join(cfg["out"], f"summary_rank{rank}.json"), "w") as f:
    json.dump(summary, f)
"""


def test_two_process_gloo_run(tmp_path):
    from transcam_nb.data import synthetic

    if not torch.distributed.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    root = synthetic.generate(tmp_path / "bench", workers=0, progress=False, image_size=64, n_train=12, n_val=4,
                              n_test=0, num_classes=3)
    out = tmp_path / "ddp"
    out.mkdir()
    prof = dict(model_overrides=SMALL_MODEL, init_checkpoint=None, num_fg=3, batch_size=4, crop_size=64, resize_long=[56, 80],
                data_root=str(root), max_steps=4, checkpoint_minutes=None, final_eval=False, synthetic=None,
                threads=1, device="cpu")
    script = tmp_path / "ddp_script.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           json.dumps({"profile": prof, "out": str(out)})]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # both ranks ran all steps, with the global batch of 4 split 2 + 2
    for r in (0, 1):
        s = json.loads((out / f"summary_rank{r}.json").read_text())
        assert s["steps"] == 4 and s["world_size"] == 2 and s["effective_batch"] == 4 and s["local_batch"] == 2
    assert "effective batch 4 = 2 process(es) × 2" in proc.stderr
    # identical parameters on both ranks (although each rank started from other random weights)
    p0 = torch.load(out / "rank0.pt", weights_only=True)
    p1 = torch.load(out / "rank1.pt", weights_only=True)
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    # rank 0 wrote the checkpoint (its weights), the log holds each step once
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 4 and len(ck["rng"]) == 2
    for k in p0:
        assert torch.equal(ck["model"][k], p0[k]), k
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["classifier.pt", "last.pt", "rank0.pt",
                                                                          "rank1.pt"]
