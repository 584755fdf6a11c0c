"""Learned aggregation of blocks and heads (:mod:`transcam_nb.aggregation`) on a profile's cached
classifier: fit the weights on the first ``--train`` images of the training split (image labels
only), print them, and compare the learned variant with the paper's AA and its AS / AD subsets
(and the plain CAM) on the first ``--val`` images of the evaluation split: mIoU at the best τ
(picked on the masks, optimistic for every row alike) and at the profile's fixed τ.

    python benchmarks/fit_aggregation.py --profile tiny --train 200 --steps 50 --val 200 --out /tmp/agg.json

The classifier comes from the classifier cache (``transcam_nb.workflow.classifier``: trained on
first use if the cache is cold, which takes long).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--train", type=int, default=200, help="training images for the fit (first N of train_split)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--scale", type=float, default=None, help="fit scale (default: the profile's largest)")
    ap.add_argument("--val", type=int, default=200, help="evaluation images (0: skip the comparison)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from transcam_nb import workflow
    from transcam_nb.aggregation import fit_aggregation, learned_variant
    from transcam_nb.config import get_profile
    from transcam_nb.data.voc import VOCDataset

    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    model, run_dir = workflow.classifier(prof, progress=False)
    ds = VOCDataset(workflow.data_root(prof), prof.train_split, mode="cls")  # images and image labels, no masks
    n = min(args.train, len(ds))
    scale = args.scale or max(prof.scales)
    t0 = time.time()
    w, hist = fit_aggregation(model, (ds[i] for i in range(n)), scale=scale, square=prof.square,
                              steps=args.steps, lr=args.lr)
    fit_s = time.time() - t0
    res = {"profile": prof.name, "classifier": str(run_dir), "train_split": prof.train_split, "num_train": n,
           "scale": scale, "steps": args.steps, "lr": args.lr, "fit_s": round(fit_s, 1),
           "weights": w.tolist(), "loss_start": hist["loss"][0], "loss_end": hist["loss"][-1],
           "train_map_start": hist["map_start"], "train_map_end": hist["map_end"]}
    L, H = w.shape
    print(f"fit on {n} {prof.train_split} images at {scale} px, {args.steps} steps: BCE {hist['loss'][0]:.4f} -> "
          f"{hist['loss'][-1]:.4f}, train mAP {hist['map_start']:.4f} -> {hist['map_end']:.4f} ({fit_s:.0f} s)")
    print("weights (rows: blocks 1..%d, columns: heads; uniform = %.4f)" % (L, 1 / (L * H)))
    for i, row in enumerate(w.tolist()):
        print(f"  block {i + 1:2d}  " + "  ".join(f"{v:.4f}" for v in row) + f"   sum {sum(row):.4f}")
    if args.val:
        variants = {"CAM": ("none", None), "TransCAM (AA)": ("transcam", "AA"), "AS (blocks 1-6)": ("transcam", "AS"),
                    "AD (blocks 7-12)": ("transcam", "AD")}
        variants.update(learned_variant(w, "Learned (blocks × heads)"))
        t0 = time.time()
        ev = workflow.evaluate_variants(model, prof, variants=variants, split=prof.eval_split, limit=args.val,
                                        progress=False)
        res["eval"] = {"split": prof.eval_split, "num_images": ev["num_images"], "s": round(time.time() - t0, 1),
                       "variants": {k: {kk: v[kk] for kk in ("best_tau", "best_miou", "fixed_tau", "fixed_miou")}
                                    for k, v in ev["variants"].items()}}
        print(f"{prof.eval_split}, first {ev['num_images']} images: mIoU (%) at the best τ | at the fixed τ")
        for k, v in res["eval"]["variants"].items():
            print(f"  {k:<26} {100 * v['best_miou']:6.2f} (τ={v['best_tau']:.2f}) | {100 * v['fixed_miou']:6.2f} "
                  f"(τ={v['fixed_tau']:.2f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
