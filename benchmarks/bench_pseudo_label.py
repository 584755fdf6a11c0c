"""Benchmark: one full six-input TransCAM pseudo label (3 scales × 2 flips) per path, in one run.

Paths (each in a fresh subprocess, so the peak RSS, ``ru_maxrss``, is its own):

``keepall-fp32``   the authors' algorithm, written like their ``infer_TransCAM.py`` + ``Net.forward``
                   (docs/reference.md §3, §11): batch 1, each block's per-head attention
                   ``[1, heads, N, N]`` kept, all 12 stacked, averaged over heads, summed over
                   blocks; numpy fusion of all 20 channels. The baseline of every ratio.
``explicit-fp32``  :func:`transcam_nb.cam.multiscale_cam` with ``attention="explicit"``: the
                   head-mean maps summed over the blocks on the fly (one ``N × N`` per image),
                   image and flip batched
``sdpa-fp32``      the default: Eq. 5 as ``scaled_dot_product_attention`` with the CAM as values
                   from the kept queries/keys; no ``N × N`` matrix anywhere
``sdpa-bf16``      the same with ``precision="bf16"`` (autocast, convolutions in channels_last).
                   Skipped, with the reason printed, on a CPU without bf16 units (no AMX /
                   AVX-512-BF16), where bf16 kernels are emulated and 10-75x slower than fp32;
                   ``--force-bf16`` runs it anyway.
``sdpa-fp32-b1``   the default path one input at a time (``batch_flips=False``); not in the default set
``sdpa-fp32-compile``  the default path with ``torch.compile`` (compile time excluded: the image is
                   run twice, the second run timed); not in the default set

The model is ``transcam_small`` (Conformer-S) with random weights (seed 0) whose q/k projections
are scaled ×3 and whose BatchNorm statistics are calibrated on one random batch (flat random
CAMs are the hardest case for agreement). One image: a 375×500 synthetic picture by default
(``--image`` for a photo), labels ``--labels``. Reported per path: seconds per image, the
whole-process peak RSS, the peak's increase over the RSS after building the model, the ratios
against keep-all (speed-up, peak), the summed maps' relative max difference and the pixel
agreement of the τ = 0.25 label maps with keep-all.

    python benchmarks/bench_pseudo_label.py --threads 2 --json bench.json
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
CONFIGS = ("keepall-fp32", "explicit-fp32", "sdpa-fp32", "sdpa-bf16")
EXTRA = ("sdpa-fp32-b1", "sdpa-fp32-compile")


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
def keepall_pseudo_label(model, pil, labels, scales, taus, device="cpu"):
    """The authors' recipe, as docs/reference.md §3/§11 describes it (per-head maps kept and stacked)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from transcam_nb.cam import preprocess
    from transcam_nb.models import conformer as conf

    store: list = []
    orig_forward = conf.Attention.forward

    def forward_keep(self, x, need_weights=False, keep_qk=False):  # the reference Attention: explicit softmax, map returned
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        store.append(attn)  # [B, heads, N, N], kept until the end of the forward
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), None, None

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
                    out = model(torch.from_numpy(xi)[None].to(device))
                    stacked = torch.stack(store)  # [12, 1, heads, N, N]: the second copy
                    a = torch.mean(stacked, dim=2).sum(0)[:, 1:, 1:]  # head mean, block sum, drop cls
                    cam = out.cam
                    b, c, h, w = cam.shape
                    cam = torch.einsum("nhw,ncw->nch", a, cam.reshape(b, c, h * w)).reshape(b, c, h, w)
                    del stacked, a
                    store.clear()
                    up = F.interpolate(cam[:, 1:], (H, W), mode="bilinear", align_corners=False)[0]
                    up = up.cpu().numpy() * labels.reshape(-1, 1, 1)
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
        tensor = np.zeros((labels.size + 1, H, W), np.float32)
        for k, v in cam_dict.items():
            tensor[k + 1] = v
        tensor[0] = t
        out_labels.append(np.argmax(tensor, 0).astype(np.uint8))
    return raw, out_labels


def our_pseudo_label(model, pil, labels, scales, taus, attention, precision, batch_flips):
    from transcam_nb.cam import multiscale_sum, normalize_cam
    from transcam_nb.pseudo import label_map

    s, classes = multiscale_sum(model, pil, labels, scales=scales, attention=attention, precision=precision,
                                batch_flips=batch_flips)
    cams = normalize_cam(s).numpy()
    return s.numpy(), [label_map(cams, classes, t) for t in taus]


def paper_scale_model(seed: int = 0, qk_gain: float = 3.0, calib_size: int = 256):
    """Conformer-S TransCAM network, random weights (``seed``), q/k projections × ``qk_gain``,
    BatchNorm statistics calibrated on one random batch of 2 at ``calib_size``; eval mode."""
    import torch

    from transcam_nb.models import create_model

    torch.manual_seed(seed)
    model = create_model("transcam_small", num_classes=21, drop_path_rate=0.0)
    with torch.no_grad():
        for blk in model.blocks:
            c = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * c] *= qk_gain
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * c] *= qk_gain
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
        model.train()
        model(torch.randn(2, 3, calib_size, calib_size, generator=torch.Generator().manual_seed(seed + 1)))
    return model.eval()


def cpu_has_bf16_units() -> bool:
    """True when this CPU has native bf16 arithmetic (AMX-BF16 or AVX-512-BF16; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# ----------------------------------------------------------------------------- worker / driver
def worker(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))

    pil = _load_image(args.image)
    labels = np.zeros(20, np.float32)
    labels[[int(v) for v in args.labels.split(",")]] = 1
    scales = tuple(int(v) for v in args.scales.split(","))
    taus = (0.25, 0.60)
    from transcam_nb.models import create_model

    model = create_model("transcam_small", num_classes=21, drop_path_rate=0.0)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    cfg = args.worker
    if cfg.endswith("-compile"):
        model = torch.compile(model, dynamic=False)
        model.num_classes, model.patch_size, model.depth = 21, 16, 12

    def run():
        if cfg.startswith("keepall"):
            return keepall_pseudo_label(model, pil, labels, scales, taus)
        attention = "explicit" if cfg.startswith("explicit") else "sdpa"
        precision = "bf16" if "bf16" in cfg else "fp32"
        return our_pseudo_label(model, pil, labels, scales, taus, attention, precision,
                                batch_flips=not cfg.endswith("-b1"))

    # tiny warm-up (kernel set-up), then the measured images
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    rss_model = _rss_mb()
    if cfg.endswith("-compile"):
        run()  # compiles one graph per scale
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
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {CONFIGS + EXTRA}")
    p.add_argument("--force-bf16", action="store_true", help="run the bf16 path even without bf16 CPU units")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import numpy as np

    import torch

    sys.path.insert(0, str(REPO))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the weights are made once here, so no worker's peak includes the BN calibration
        weights = Path(tmp) / "weights.pt"
        torch.set_num_threads(args.threads)
        torch.save(paper_scale_model().state_dict(), weights)
        for cfg in args.configs.split(","):
            if cfg not in CONFIGS + EXTRA:
                p.error(f"--configs: unknown path {cfg!r}; expected some of {CONFIGS + EXTRA}")
            if "bf16" in cfg and not (args.force_bf16 or cpu_has_bf16_units()):
                print(f"skipping {cfg}: this CPU has no bf16 units (no amx_bf16/avx512_bf16 flag); bf16 kernels "
                      "would be emulated, 10-75x slower than fp32 (--force-bf16 runs it)", flush=True)
                continue
            res_path, dump = Path(tmp) / f"{cfg}.json", Path(tmp) / f"{cfg}.npz"
            cmd = [sys.executable, __file__, "--worker", cfg, "--result", str(res_path), "--dump", str(dump),
                   "--labels", args.labels, "--scales", args.scales, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--weights", str(weights)] + (["--image", args.image] if args.image else [])
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            print(f"running {cfg} ...", flush=True)
            subprocess.run(cmd, check=True, env=env)
            results[cfg] = json.loads(res_path.read_text())
            with np.load(dump) as z:
                results[cfg]["_raw"], results[cfg]["_lab"] = z["raw"], (z["lab025"], z["lab060"])
        base = results.get("keepall-fp32")
        print(f"\nscales {args.scales}, {args.threads} threads, transcam_small, one image "
              f"({'synthetic 375x500' if not args.image else Path(args.image).name})")
        print(f"{'path':<19}{'s/image':>9}{'speed-up':>10}{'peak GiB':>10}{'peak ratio':>11}{'Δ MB':>8}"
              f"{'sum rel.diff':>14}{'τ=.25 agree %':>15}")
        for cfg, r in results.items():
            if base is not None:
                r["speedup_vs_keepall"] = base["seconds"] / r["seconds"]
                r["peak_over_keepall"] = r["peak_rss_mb"] / base["peak_rss_mb"]
                ref = base["_raw"]
                r["sum_rel_diff"] = float(np.abs(r["_raw"] - ref).max() / np.abs(ref).max())
                r["label_agreement_025"] = float(np.mean(r["_lab"][0] == base["_lab"][0]))
                r["label_agreement_060"] = float(np.mean(r["_lab"][1] == base["_lab"][1]))
            nan = float("nan")
            print(f"{cfg:<19}{r['seconds']:>9.2f}{r.get('speedup_vs_keepall', nan):>10.2f}"
                  f"{r['peak_rss_mb'] / 1024:>10.2f}{r.get('peak_over_keepall', nan):>11.2f}{r['delta_mb']:>8.0f}"
                  f"{r.get('sum_rel_diff', nan):>14.2e}{100 * r.get('label_agreement_025', nan):>15.3f}")
        for r in results.values():
            r.pop("_raw"), r.pop("_lab")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
