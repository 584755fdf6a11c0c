"""Benchmark: one full six-input TransCAM pseudo label (3 scales × 2 flips) per configuration.

Configurations (each in a fresh subprocess, so the peak RSS, ``ru_maxrss``, is its own):

``stream-fp32``       :func:`transcam_nb.cam.multiscale_cam` (streaming attention sum, image
                      and flip batched), float32
``stream-bf16``       the same under bf16 autocast (refinement and fusion stay float32)
``stream-fp32-b1``    streaming, one input at a time (``batch_flips=False``), float32
``keepall-fp32``      written like the authors' ``infer_TransCAM.py`` + ``Net.forward``
                      (REFERENCE.md §3, §11): batch 1, each block's per-head attention
                      ``[1, heads, N, N]`` kept, all 12 stacked, averaged over heads, summed over
                      blocks; numpy fusion of all 20 channels

Each run: build ``transcam_small`` (random init, seed 0, eval), run the pipeline on one image
(default: a 375×500 synthetic picture; ``--image`` for a real photo) and make the label maps
at τ = 0.25 and 0.60. Reports seconds per image, peak RSS, the peak's increase over the RSS
after building the model, and the ratios against keep-all. The summed maps of every
configuration are compared with keep-all's (relative max difference) as a sanity check.

    python benchmarks/bench_pseudo_label.py --image photo.jpg --labels 7,11,17,19 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("keepall-fp32", "stream-fp32", "stream-bf16", "stream-fp32-b1")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024.0
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _load_image(path: str | None):
    import numpy as np
    from PIL import Image

    if path:
        with Image.open(path) as im:
            return im.convert("RGB")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    img = 127 + 90 * np.stack([np.sin(x / 23.0), np.cos(y / 17.0), np.sin((x + y) / 31.0)], -1)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- keep-all
def keepall_pseudo_label(model, pil, labels, scales, taus):
    """The authors' recipe, as REFERENCE.md §3/§11 describes it (per-head maps kept and stacked)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from transcam_nb.cam import preprocess
    from transcam_nb.models import conformer as conf

    store: list = []
    orig_forward = conf.Attention.forward

    def forward_keep(self, x, need_weights=False):  # the reference Attention: explicit softmax, map returned
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        store.append(attn)  # [B, heads, N, N], kept until the end of the forward
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), None

    W, H = pil.size
    cam_list = []
    conf.Attention.forward = forward_keep
    try:
        with torch.no_grad():
            for s in scales:
                x = preprocess(pil, (s, s))
                for flipped in (False, True):
                    xi = np.flip(x, -1).copy() if flipped else x
                    store.clear()
                    out = model(torch.from_numpy(xi)[None])
                    stacked = torch.stack(store)  # [12, 1, heads, N, N]: the second copy
                    a = torch.mean(stacked, dim=2).sum(0)[:, 1:, 1:]  # head mean, block sum, drop cls
                    cam = out.cam
                    b, c, h, w = cam.shape
                    cam = torch.einsum("nhw,ncw->nch", a, cam.reshape(b, c, h * w)).reshape(b, c, h, w)
                    del stacked, a
                    store.clear()
                    up = F.interpolate(cam[:, 1:], (H, W), mode="bilinear", align_corners=False)[0]
                    up = up.numpy() * labels.reshape(20, 1, 1)
                    if flipped:
                        up = np.flip(up, -1)
                    cam_list.append(up)
    finally:
        conf.Attention.forward = orig_forward
    sum_cam = np.sum(cam_list, axis=0)
    raw = sum_cam[labels > 1e-5].copy()
    sum_cam[sum_cam < 0] = 0
    cmax = np.max(sum_cam, (1, 2), keepdims=True)
    cmin = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cmin + 1e-5] = 0
    norm = (sum_cam - cmin - 1e-5) / (cmax - cmin + 1e-5)
    cam_dict = {int(k): norm[k] for k in np.flatnonzero(labels > 1e-5)}
    out_labels = []
    for t in taus:
        tensor = np.zeros((21, H, W), np.float32)
        for k, v in cam_dict.items():
            tensor[k + 1] = v
        tensor[0] = t
        out_labels.append(np.argmax(tensor, 0).astype(np.uint8))
    return raw, out_labels


def stream_pseudo_label(model, pil, labels, scales, taus, amp, batch_flips):
    import torch

    from transcam_nb.cam import multiscale_sum, normalize_cam
    from transcam_nb.pseudo import label_map

    s, classes = multiscale_sum(model, pil, labels, scales=scales, amp_dtype=amp, batch_flips=batch_flips)
    cams = normalize_cam(s).numpy()
    return s.numpy(), [label_map(cams, classes, t) for t in taus]


# ----------------------------------------------------------------------------- worker / driver
def worker(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from transcam_nb.models import create_model

    pil = _load_image(args.image)
    labels = np.zeros(20, np.float32)
    labels[[int(v) for v in args.labels.split(",")]] = 1
    scales = tuple(int(v) for v in args.scales.split(","))
    taus = (0.25, 0.60)
    torch.manual_seed(0)
    model = create_model("transcam_small", num_classes=21, drop_path_rate=0.0).eval()
    cfg = args.worker
    amp = torch.bfloat16 if cfg.endswith("bf16") else None

    def run():
        if cfg.startswith("keepall"):
            return keepall_pseudo_label(model, pil, labels, scales, taus)
        return stream_pseudo_label(model, pil, labels, scales, taus, amp, batch_flips=not cfg.endswith("b1"))

    # tiny warm-up at the smallest scale only (kernel set-up), then the measured images
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    rss_model = _rss_mb()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        raw, labs = run()
        times.append(time.perf_counter() - t0)
    np.savez(args.dump, raw=raw, lab025=labs[0], lab060=labs[1])
    res = {"config": cfg, "seconds": min(times), "all_seconds": times, "rss_after_model_mb": rss_model,
           "peak_rss_mb": _peak_mb(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    res["delta_mb"] = res["peak_rss_mb"] - rss_model
    Path(args.result).write_text(json.dumps(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=None, help="a photo (default: a 375x500 synthetic image)")
    p.add_argument("--labels", default="7,11,17,19", help="0-based present classes")
    p.add_argument("--scales", default="256,512,768")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs.split(","):
            res_path, dump = Path(tmp) / f"{cfg}.json", Path(tmp) / f"{cfg}.npz"
            cmd = [sys.executable, __file__, "--worker", cfg, "--result", str(res_path), "--dump", str(dump),
                   "--labels", args.labels, "--scales", args.scales, "--threads", str(args.threads),
                   "--repeats", str(args.repeats)] + (["--image", args.image] if args.image else [])
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            print(f"running {cfg} ...", flush=True)
            subprocess.run(cmd, check=True, env=env)
            results[cfg] = json.loads(res_path.read_text())
            with np.load(dump) as z:
                results[cfg]["_raw"], results[cfg]["_lab"] = z["raw"], (z["lab025"], z["lab060"])
        base = results.get("keepall-fp32")
        print(f"\nscales {args.scales}, {args.threads} threads, transcam_small, one image "
              f"({'synthetic 375x500' if not args.image else Path(args.image).name})")
        print(f"{'config':<16}{'s/image':>9}{'peak MB':>10}{'delta MB':>10}{'peak ratio':>12}{'delta ratio':>12}"
              f"{'speed-up':>10}{'sum rel.diff':>14}{'label px diff':>15}")
        for cfg, r in results.items():
            if base is not None:
                r["peak_ratio_keepall_over_this"] = base["peak_rss_mb"] / r["peak_rss_mb"]
                r["delta_ratio_keepall_over_this"] = base["delta_mb"] / max(r["delta_mb"], 1e-9)
                r["speedup_vs_keepall"] = base["seconds"] / r["seconds"]
                ref = base["_raw"]
                r["sum_rel_diff"] = float(np.abs(r["_raw"] - ref).max() / np.abs(ref).max())
                r["label_px_diff"] = float(np.mean(r["_lab"][0] != base["_lab"][0]))
            print(f"{cfg:<16}{r['seconds']:>9.2f}{r['peak_rss_mb']:>10.0f}{r['delta_mb']:>10.0f}"
                  f"{r.get('peak_ratio_keepall_over_this', float('nan')):>12.2f}"
                  f"{r.get('delta_ratio_keepall_over_this', float('nan')):>12.2f}"
                  f"{r.get('speedup_vs_keepall', float('nan')):>10.2f}"
                  f"{r.get('sum_rel_diff', float('nan')):>14.2e}{r.get('label_px_diff', float('nan')):>15.4f}")
        for r in results.values():
            r.pop("_raw"), r.pop("_lab")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
