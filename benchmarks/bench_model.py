"""Forward time and peak memory of ``transcam_small`` (batch 1, eval, random weights).

Configurations: input 256 / 512 / 768 × attention mode × precision, where the mode is
``none`` (SDPA, no weights), ``keep-all`` (``return_attn=True``: all 12 head-mean maps kept and
stacked, like the authors' forward) or ``stream`` (``attn_blocks=range(12)``: one running
sum), and the precision is fp32 or bf16 autocast (CPU autocast; this CPU has AMX-BF16).

Each configuration runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own;
"delta" is the peak minus the RSS after building the model. Times are the median and best of
``--repeats`` runs after one warm-up. Figures on a shared 2-core VM are noisy: compare ratios
within one run.

    python benchmarks/bench_model.py                      # all sizes, all modes, fp32 + bf16
    python benchmarks/bench_model.py --sizes 256 512 --repeats 2 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(size: int, mode: str, dtype: str, repeats: int, threads: int) -> dict:
    import torch

    from transcam_nb.models import create_model

    torch.set_num_threads(threads)
    model = create_model("transcam_small").eval()
    base = rss_mb()
    x = torch.randn(1, 3, size, size)
    kwargs = {"none": {}, "keep-all": {"return_attn": True}, "stream": {"attn_blocks": range(12)}}[mode]
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False))
    times = []
    with torch.inference_mode(), ctx:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            out = model(x, **kwargs)
            if mode == "keep-all":  # what the authors do next: sum over blocks, drop the class token
                a = out.attn.sum(0)[:, 1:, 1:]
            elif mode == "stream":
                a = out.attn_sum[:, 1:, 1:]
            dt = time.perf_counter() - t0
            if i:
                times.append(dt)
            del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "mode": mode, "dtype": dtype, "median_s": statistics.median(times),
            "best_s": min(times), "peak_mb": peak, "delta_mb": peak - base}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768])
    ap.add_argument("--modes", nargs="+", default=["none", "keep-all", "stream"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("SIZE", "MODE", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, mode, dtype = args.one
        print(json.dumps(run_one(int(size), mode, dtype, args.repeats, args.threads)))
        return
    import torch

    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}")
    rows = []
    for size in args.sizes:
        for dtype in args.dtypes:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--one", str(size), mode, dtype,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr, file=sys.stderr)
                    raise SystemExit(f"configuration {size} {mode} {dtype} failed")
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{size:4d} {dtype:5s} {mode:9s} median {row['median_s']:7.3f} s  best {row['best_s']:7.3f} s"
                      f"  peak {row['peak_mb']:7.0f} MB  delta {row['delta_mb']:7.0f} MB", flush=True)
    print("\nratios against keep-all (same size, same dtype):")
    for size in args.sizes:
        for dtype in args.dtypes:
            ref = next((r for r in rows if r["size"] == size and r["dtype"] == dtype and r["mode"] == "keep-all"), None)
            if ref is None:
                continue
            for r in rows:
                if r["size"] == size and r["dtype"] == dtype and r["mode"] != "keep-all":
                    print(f"{size:4d} {dtype:5s} {r['mode']:9s} time x{r['best_s'] / ref['best_s']:.2f}"
                          f"  memory delta x{r['delta_mb'] / max(ref['delta_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
