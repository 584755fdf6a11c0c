"""One device check, ratios measured in one run (driven by ``benchmarks/device_check.sh``).

(a) classifier training throughput (Eq. 6 loss, SGD step), batch ``--batch`` at ``--crop``:
    ``ours``     autocast (bf16 on CUDA, or ``--precision``), convolutions in channels_last,
                 fused attention (SDPA)
    ``authors``  what the authors' loop does: fp32, NCHW, explicit softmax attention
(b) pseudo-label seconds per image at ``--scales`` + flips: our fast path (SDPA refinement at
    ``--precision``) vs the keep-all fp32 path (the authors' algorithm, from
    ``bench_pseudo_label.py``), plus the peak memory of each
(c) pixel agreement of the τ = 0.25 labels of (b)'s two paths.

Random weights (Conformer-S, seed 0, q/k ×3, BatchNorm calibrated on one random batch) and
generated images: no data or weights from outside. ``--smoke`` shrinks everything (a tiny
network, small sizes, CPU) so the script is known to work in seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device):
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # whole process, kB -> GiB


@contextlib.contextmanager
def explicit_attention():
    """The authors' Attention: explicit ``softmax(QKᵀ/√d)`` materialised, then ``@ V``."""
    from transcam_nb.models import conformer as conf

    orig = conf.Attention.forward

    def forward(self, x, need_weights=False, keep_qk=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), None, None

    conf.Attention.forward = forward
    try:
        yield
    finally:
        conf.Attention.forward = orig


def build_model(args, device):
    import torch

    from bench_pseudo_label import paper_scale_model
    from transcam_nb.models import create_model

    if args.smoke:
        torch.manual_seed(0)
        m = create_model("transcam_tiny", num_classes=21, embed_dim=64, num_heads=4, channel_ratio=0.25,
                         drop_path_rate=0.0)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
        with torch.no_grad():
            m.train()(torch.randn(2, 3, 64, 64))
        return m.eval().to(device)
    return paper_scale_model().to(device)


def train_throughput(model, device, args, style: str) -> float:
    """Images per second of ``--steps`` timed SGD steps (after ``--warmup``)."""
    import torch
    import torch.nn.functional as F

    from transcam_nb.device import precision_autocast

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.crop, args.crop, generator=g).to(device)
    y = (torch.rand(args.batch, 20, generator=g) < 0.15).float().to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ours = style == "ours"
    precision = args.precision if ours else "fp32"
    cl = ours and precision != "fp32"
    scaler = torch.amp.GradScaler(device.type, enabled=ours and precision == "fp16")
    if cl:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = contextlib.nullcontext() if ours else explicit_attention()

    def step():
        with precision_autocast(device, precision):
            out = model(x)
            loss = F.multilabel_soft_margin_loss(out.conv_logits[:, 1:].float(), y) + \
                F.multilabel_soft_margin_loss(out.trans_logits[:, 1:].float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    try:
        with ctx:
            for _ in range(args.warmup):
                step()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            dt = time.perf_counter() - t0
    finally:
        if cl:
            model.to(memory_format=torch.contiguous_format)
        model.eval()
    return args.batch * args.steps / dt


def pseudo_label(model, device, args, path: str):
    """``(seconds per image, peak GiB, label maps)`` for ``path`` in {"ours", "keepall"}."""
    import numpy as np

    from bench_pseudo_label import _load_image, keepall_pseudo_label, our_pseudo_label

    pil = _load_image(None)
    labels = np.zeros(20, np.float32)
    labels[[7, 11, 17, 19]] = 1
    taus = (0.25, 0.60)

    def run():
        if path == "keepall":
            return keepall_pseudo_label(model, pil, labels, args.scales, taus, device=device)
        return our_pseudo_label(model, pil, labels, args.scales, taus, "sdpa", args.precision, batch_flips=True)

    run()  # warm-up (kernel selection, allocator)
    _sync(device)
    _peak_reset(device)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        _, labs = run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), _peak_gib(device), labs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny network, small sizes, CPU: seconds")
    p.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    p.add_argument("--precision", default=None, help="our path's precision (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--scales", default="256,512,768")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: train,pseudo")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from transcam_nb.device import get_device, resolve_precision

    if args.smoke:
        args.device = args.device or "cpu"
        args.batch, args.crop, args.steps, args.warmup, args.repeats = 2, 64, 2, 1, 1
        args.scales = "32,64"
        torch.set_num_threads(1)
    device = get_device(args.device)
    args.precision = resolve_precision(args.precision or ("bf16" if device.type == "cuda" else "fp32"), device,
                                       arg="--precision")
    args.scales = tuple(int(s) for s in args.scales.split(","))
    skip = {s for s in args.skip.split(",") if s}
    model = build_model(args, device)
    res = {"device": str(device), "precision": args.precision, "smoke": args.smoke, "torch": torch.__version__}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    print(f"device {device} ({res.get('gpu', 'cpu')}), our precision {args.precision}", flush=True)

    if "train" not in skip:
        ours = train_throughput(model, device, args, "ours")
        authors = train_throughput(model, device, args, "authors")
        res["train"] = {"ours_img_s": ours, "authors_img_s": authors, "ratio": ours / authors,
                        "batch": args.batch, "crop": args.crop}
        print(f"(a) training img/s at batch {args.batch}, {args.crop}px: ours {ours:.2f}, authors-style {authors:.2f}"
              f"  -> {ours / authors:.2f}x (goal >= 2x on a GPU)", flush=True)
    if "pseudo" not in skip:
        t_ours, m_ours, lab_ours = pseudo_label(model, device, args, "ours")
        t_ref, m_ref, lab_ref = pseudo_label(model, device, args, "keepall")
        agree = float((lab_ours[0] == lab_ref[0]).mean())
        res["pseudo"] = {"ours_s": t_ours, "keepall_s": t_ref, "ratio": t_ref / t_ours, "ours_peak_gib": m_ours,
                         "keepall_peak_gib": m_ref, "scales": list(args.scales)}
        res["agreement_tau025"] = agree
        print(f"(b) pseudo label s/img at {args.scales} + flips: ours {t_ours:.3f}, keep-all fp32 {t_ref:.3f}"
              f"  -> {t_ref / t_ours:.2f}x (goal >= 5x on a GPU); peak {m_ours:.2f} vs {m_ref:.2f} GiB"
              f"{' (device)' if device.type == 'cuda' else ' (whole process, cumulative)'}", flush=True)
        print(f"(c) τ=0.25 label agreement, ours vs keep-all fp32: {100 * agree:.3f} %", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
