"""Benchmark: PAR (:mod:`transcam_nb.postprocess.par`) against the dense CRF (:mod:`.crf`).

Time per image, with random CAMs (21 channels, softmax) on a real photo resized to
* 160×160 (the tiny profile's image size) and 500×375 (a VOC image):

``crf-psa``       ``crf_probs(preset="psa")``: 10 mean-field iterations (pydensecrf, one CPU thread)
``crf-deeplab``   ``crf_probs(preset="deeplab")``: 1 iteration (DeepLab's test-time CRF)
``par-cpu``       ``par_probs``: 10 iterations, 6 dilations (AFA's settings), CPU
``par-cuda``      ``par_refine`` on the GPU, one image; ``par-cuda-b16``: a batch of 16, per image

Quality on the 4 VOC 2012 sample images (``../shared/data/voc2012_sample``): the official masks
coarsened ×16 (nearest down, nearest up; void → background) are the seeds; ``crf_labels``
(the authors' ``crf_inference_label``, 21 labels) and ``par_labels`` refine them. Pixel accuracy
and mIoU (over the classes present in the 4 masks) before and after, and seconds per image.

Pseudo labels from a pipeline run's cached CAMs (``--run DIR``, e.g. the tiny profile's
``<artifacts>/pipeline-tiny-<hash>``): for the first ``--limit`` images of its ``cams`` stage, the
thresholded TransCAM maps at τ = 0.60 (la), 0.25 (ha, the tiny profile's fixed τ) as they are,
after the ``label`` CRF and after PAR (:func:`transcam_nb.postprocess.crf.refine_labels`, the
pipeline's ``postprocess`` setting): mIoU against the masks and seconds per refined label map
(one image at one τ). ``--only-run``
skips the timing and the VOC sample.

    python benchmarks/bench_par.py --threads 1 --out /tmp/bench_par.json
    python benchmarks/bench_par.py --threads 1 --only-run --run ARTIFACTS/pipeline-tiny-HASH --limit 64

The CRF rows are skipped (with a note) when pydensecrf is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOC_IDS = ["2007_001763", "2011_000003", "2011_000025", "2011_003066"]


def _voc_root() -> Path:
    shared = Path(os.environ.get("TRANSCAM_SHARED", REPO.parent / "shared"))
    for cand in (REPO / "tests" / "data" / "voc2012_sample", shared / "data" / "voc2012_sample"):
        if (cand / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir():
            return cand / "VOCdevkit" / "VOC2012"
    raise FileNotFoundError(f"VOC sample not found under tests/data/ or {shared}/data (set TRANSCAM_SHARED)")


def _coarsen(gt: np.ndarray, factor: int = 16) -> np.ndarray:
    from PIL import Image

    small = gt[::factor, ::factor].copy()
    small[small == 255] = 0
    return np.array(Image.fromarray(small).resize(gt.shape[::-1], Image.NEAREST))


def _timed(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up
    if sync:
        sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _have_crf() -> bool:
    from transcam_nb.postprocess import crf

    try:
        crf.require_pydensecrf()
        return True
    except ImportError:
        return False


def bench_time(image: np.ndarray, repeats: int, device: str, have_crf: bool) -> list[dict]:
    import torch
    from PIL import Image

    from transcam_nb.postprocess import crf
    from transcam_nb.postprocess.par import par_probs, par_refine

    rows = []
    rng = np.random.default_rng(0)
    for w, h in [(160, 160), (500, 375)]:
        img = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        logits = rng.normal(size=(21, h, w)).astype(np.float32) * 2
        probs = np.exp(logits - logits.max(0))
        probs /= probs.sum(0)
        size = f"{w}x{h}"
        if have_crf:
            rows.append(dict(size=size, method="crf-psa", s=_timed(lambda: crf.crf_probs(img, probs, "psa"), repeats)))
            rows.append(dict(size=size, method="crf-deeplab", s=_timed(lambda: crf.crf_probs(img, probs, "deeplab"), repeats)))
        rows.append(dict(size=size, method="par-cpu", s=_timed(lambda: par_probs(img, probs), repeats)))
        if device == "cuda":
            ti = torch.from_numpy(img).permute(2, 0, 1).float().cuda()
            tp = torch.from_numpy(probs).cuda()
            sync = torch.cuda.synchronize
            with torch.no_grad():
                rows.append(dict(size=size, method="par-cuda", s=_timed(lambda: par_refine(ti, tp), repeats, sync)))
                bi, bp = ti.expand(16, -1, -1, -1).contiguous(), tp.expand(16, -1, -1, -1).contiguous()
                t16 = _timed(lambda: par_refine(bi, bp), repeats, sync)
            rows.append(dict(size=size, method="par-cuda-b16", s=t16 / 16))
    return rows


def bench_quality(have_crf: bool) -> dict:
    from PIL import Image

    from transcam_nb.metrics import ConfusionMatrix
    from transcam_nb.postprocess import crf
    from transcam_nb.postprocess.par import par_labels

    root = _voc_root()
    cms = {k: ConfusionMatrix(21) for k in ("seed", "crf", "par")}
    secs = {"crf": [], "par": []}
    per_image = []
    for i in VOC_IDS:
        img = np.array(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB"))
        with Image.open(root / "SegmentationClass" / f"{i}.png") as m:
            gt = np.array(m)
        seed = _coarsen(gt)
        cms["seed"].update(seed, gt)
        row = {"id": i, "size": f"{img.shape[1]}x{img.shape[0]}"}
        v = gt != 255
        row["seed_acc"] = float((seed[v] == gt[v]).mean())
        methods = [("par", lambda: par_labels(img, seed, 21))]
        if have_crf:
            methods.insert(0, ("crf", lambda: crf.crf_labels(img, seed, 21)))
        for name, fn in methods:
            t = time.perf_counter()
            out = fn()
            secs[name].append(time.perf_counter() - t)
            cms[name].update(out, gt)
            row[f"{name}_acc"] = float((out[v] == gt[v]).mean())
        per_image.append(row)
    summary = {}
    for name, cm in cms.items():
        if name != "seed" and not secs[name]:
            continue
        summary[name] = dict(pixel_acc=cm.pixel_accuracy(), miou_present=cm.miou(present_only=True),
                             s_per_image=float(np.mean(secs[name])) if name in secs else None)
    return {"summary": summary, "per_image": per_image}


def bench_run(run_dir: Path, limit: int, have_crf: bool, profile: str = "tiny",
              thresholds=(0.60, 0.25)) -> dict:
    """Seeds from a pipeline run's cached TransCAM maps, refined by nothing, the CRF and PAR."""
    from transcam_nb.config import get_profile
    from transcam_nb.metrics import ConfusionMatrix
    from transcam_nb.pipeline.context import PipelineContext, pipeline_config
    from transcam_nb.postprocess.crf import labels_from_cams, refine_labels
    from transcam_nb.pseudo import load_cams

    prof = get_profile(profile)
    ctx = PipelineContext(prof, pipeline_config(prof), Path(run_dir), progress=False)
    src = Path(run_dir) / "cams" / "transcam"
    if not src.is_dir():
        raise FileNotFoundError(f"--run {run_dir}: no cams/transcam folder (run the pipeline's cams stage first)")
    ids = [i for i in ctx.pseudo_ids() if (src / f"{i}.npz").is_file()][:limit]
    methods = ["none"] + (["crf"] if have_crf else []) + ["par"]
    K = ctx.num_fg + 1
    cms = {(t, m): ConfusionMatrix(K) for t in thresholds for m in methods}
    secs = {m: 0.0 for m in methods}
    for iid in ids:
        cams, classes = load_cams(src / f"{iid}.npz")
        img, gt = ctx.image(iid), ctx.mask(iid)
        for t in thresholds:
            hard = labels_from_cams(cams, classes, float(t), ctx.num_fg)
            for m in methods:
                t0 = time.perf_counter()
                out = hard if m == "none" else refine_labels(img, hard, K, m)
                secs[m] += time.perf_counter() - t0
                cms[(t, m)].update(out, gt)
    rows = [dict(tau=t, method=m, miou=cms[(t, m)].miou(),
                 s_per_image=(secs[m] / max(1, len(ids) * len(thresholds))) if m != "none" else None)
            for t in thresholds for m in methods]
    return {"run": str(run_dir), "profile": profile, "num_images": len(ids),
            "size": f"{img.shape[1]}x{img.shape[0]}" if ids else None, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (pydensecrf is single-threaded)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--run", default=None, help="a pipeline run folder: CRF vs PAR on its cached CAMs")
    ap.add_argument("--profile", default="tiny", help="the run's profile (default tiny)")
    ap.add_argument("--limit", type=int, default=64, help="images of --run (default the first 64)")
    ap.add_argument("--only-run", action="store_true", help="only the --run comparison")
    args = ap.parse_args(argv)
    if args.only_run and not args.run:
        ap.error("--only-run needs --run DIR")

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    have_crf = _have_crf()
    res = {
        "threads": args.threads, "device": device, "torch": torch.__version__, "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0], "crf_available": have_crf,
    }
    if device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    print(f"threads={args.threads} device={device} cpus={res['cpus']} load={res['load_avg_1min']:.1f}"
          + ("" if have_crf else "  (pydensecrf absent: no CRF rows)"))
    if args.run:
        r = res["run"] = bench_run(Path(args.run), args.limit, have_crf, args.profile)
        print(f"pipeline run {r['run']}: {r['num_images']} images ({r['size']}), seeds = thresholded TransCAM maps")
        for row in r["rows"]:
            t = "" if row["s_per_image"] is None else f"  {row['s_per_image']:.4f} s per label map"
            print(f"  tau {row['tau']:.2f}  {row['method']:<5} mIoU {100 * row['miou']:.2f}{t}")
    if args.only_run:
        _write(res, args.out)
        return 0
    root = _voc_root()
    image = np.array(Image.open(root / "JPEGImages" / f"{VOC_IDS[0]}.jpg").convert("RGB"))
    res["time"] = bench_time(image, args.repeats, device, have_crf)
    res["quality"] = bench_quality(have_crf)
    print("seconds per image, random 21-class CAMs")
    for r in res["time"]:
        print(f"  {r['size']:>8}  {r['method']:<13} {r['s']:.4f}")
    print("VOC sample (4 images), seeds = masks coarsened x16")
    for name, s in res["quality"]["summary"].items():
        t = "" if s["s_per_image"] is None else f"  {s['s_per_image']:.3f} s/image"
        print(f"  {name:<5} pixel acc {s['pixel_acc']:.4f}  mIoU(present) {s['miou_present']:.4f}{t}")
    for r in res["quality"]["per_image"]:
        print("   ", "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    _write(res, args.out)
    return 0


def _write(res: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
