"""Training throughput (images/s) and peak memory of the classifier step.

One training step = forward (fused attention, no weights kept) + Eq. 6 loss + backward + AdamW
step, exactly what :func:`transcam_nb.engine.train_loop` does per batch, on random images and
labels (data loading is not timed). Configurations:

``paper``  ``transcam_small`` (Conformer-S, 37.7 M parameters), 512×512, batch 8, drop-path 0.1;
``tiny``   the tiny profile's network (embed 96, 3 heads, channel_ratio 0.5), 128×128, batch 16.

Each configuration runs in a fresh subprocess so its peak memory is its own. On a CPU the peak is
the process's max RSS (``ru_maxrss``) and "delta" is the peak minus the RSS after building the
model and optimiser; on CUDA it is ``torch.cuda.max_memory_allocated``. The first ``--warmup``
steps are not timed. Figures on a shared CPU are noisy: the best step is the better estimate of
an idle machine, the median of a busy one.

    python benchmarks/bench_train.py                          # paper + tiny on the default device
    python benchmarks/bench_train.py --configs paper --steps 3 --device cuda --precision auto
    python benchmarks/bench_train.py --configs tiny --steps 10 --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "paper": dict(model="transcam_small", overrides=dict(drop_path_rate=0.1), num_classes=20, size=512, batch=8),
    "tiny": dict(model="transcam_tiny", overrides=dict(embed_dim=96, num_heads=3, channel_ratio=0.5, depth=12,
                                                       drop_path_rate=0.0), num_classes=8, size=128, batch=16),
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(name: str, args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transcam_nb.device import get_device
    from transcam_nb.models import create_model
    from transcam_nb.engine import amp_setup as _amp_setup
    from transcam_nb.train import classification_loss

    cfg = dict(CONFIGS[name])
    if args.batch:
        cfg["batch"] = args.batch
    if args.size:
        cfg["size"] = args.size
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = get_device(args.device)
    model = create_model(cfg["model"], num_classes=cfg["num_classes"] + 1, **cfg["overrides"]).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=5e-4)
    net = torch.compile(model) if args.compile else model
    amp_dtype, use_scaler = _amp_setup(args.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    B, S, K = cfg["batch"], cfg["size"], cfg["num_classes"]
    x = torch.randn(B, 3, S, S, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(B, K, device=device) < 0.15).float()
    y[:, 0] = 1.0
    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                loss = classification_loss(net(x), y)
        else:
            loss = classification_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # synchronise (the loop reads the loss every step too)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        print(f"  [{name}] step {i + 1}/{args.warmup + args.steps}: {dt:.2f} s", file=sys.stderr, flush=True)
    res = {
        "config": name, "model": cfg["model"], "size": S, "batch": B, "device": str(device),
        "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32"),
        "threads": args.threads,
        "channels_last": args.channels_last, "compile": args.compile,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "steps": len(times), "median_step_s": statistics.median(times), "best_step_s": min(times),
        "images_per_s_median": B / statistics.median(times), "images_per_s_best": B / min(times),
    }
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
        res["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        res["delta_mb"] = res["peak_mb"] - base_cuda
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["peak_mb"], res["delta_mb"] = peak, peak - base
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["paper", "tiny"], choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=None, help="override the configuration's batch")
    ap.add_argument("--size", type=int, default=None, help="override the configuration's image size")
    ap.add_argument("--device", default=None, help="cpu | cuda | mps (default: auto)")
    ap.add_argument("--precision", "--amp", dest="precision", default="auto",
                    choices=["auto", "fp32", "bf16", "fp16", "off"], help="--amp is the old spelling")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    import torch

    print(f"torch {torch.__version__}, threads {args.threads}, steps {args.steps} (+{args.warmup} warm-up)",
          file=sys.stderr)
    rows = []
    child_args = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision,
                  "--threads", str(args.threads)]
    for flag, val in (("--batch", args.batch), ("--size", args.size), ("--device", args.device)):
        if val is not None:
            child_args += [flag, str(val)]
    child_args += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
    for name in args.configs:
        out = subprocess.run([sys.executable, __file__, "--one", name, *child_args], capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        if out.returncode != 0:
            print(f"{name}: failed (exit {out.returncode})", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:6s} {row['model']:15s} {row['size']}px batch {row['batch']:3d} {row['device']:6s} "
              f"{row['precision']:4s}{' CL' if row['channels_last'] else '   '}: median {row['median_step_s']:.2f} s/step = {row['images_per_s_median']:.2f} img/s "
              f"(best {row['images_per_s_best']:.2f} img/s), peak {row['peak_mb']:.0f} MB "
              f"(+{row['delta_mb']:.0f} MB over the model and optimiser)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
