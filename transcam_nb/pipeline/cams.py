"""Stage 2, CAMs: multi-scale CAM (Eq. 1) and TransCAM (Eq. 5) maps of every pseudo-label image,
``DIR/cams/cam/<id>.npz`` and ``DIR/cams/transcam/<id>.npz``, then their pseudo-label mIoU at
the τ fixed in advance and over the τ grid (:data:`transcam_nb.metrics.DEFAULT_THRESHOLDS`).
Reads the classifier stage's record."""
from __future__ import annotations

import time

import numpy as np

from ..artifacts import config_hash
from .context import PipelineContext, pct, progress_bar
from .classifier import load_classifier

__all__ = ["run"]


def run(ctx: PipelineContext) -> dict:
    """Stage 2: multi-scale CAM and TransCAM maps of every pseudo-label image, then their
    pseudo-label mIoU at the fixed τ and over the τ grid."""
    import torch

    from ..cam import multiscale_cam, multiscale_variants
    from ..metrics import ThresholdSweep, sweep_grid, sweep_summary
    from ..pseudo import load_cams, save_cams
    from ..refine import resolve_blocks

    prof, cfg = ctx.profile, ctx.config
    clf = ctx.require("classifier")
    ids = ctx.pseudo_ids()
    depth = int(prof.model_overrides.get("depth", 12))
    spec = {"classifier": clf["key"], "split": ctx.pseudo_split, "ids": config_hash(ids), "n": len(ids),
            "method": cfg.method, "blocks": resolve_blocks(cfg.blocks, depth), "scales": list(prof.scales),
            "flip": prof.flip, "square": prof.square, "cam_dtype": cfg.cam_dtype,
            "fixed_tau": float(prof.bg_threshold), "eval_split": cfg.pseudo_eval_split}
    key = ctx.begin("cams", spec)
    if ctx.finished("cams", key):
        return ctx.finished("cams", key)
    d = ctx.stage_dir("cams")
    dirs = {"cam": d / "cam", "transcam": d / "transcam"}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)

    def has(iid):
        return all((p / f"{iid}.npz").is_file() for p in dirs.values())

    t0 = time.time()
    todo = [i for i in ctx.my_part(ids) if not has(i)]
    if todo:
        model = load_classifier(ctx)
        ds = ctx.dataset(ctx.pseudo_split)
        index = {iid: k for k, iid in enumerate(ds.ids)}
        one_pass = cfg.one_pass if cfg.one_pass is not None else ctx.device.type == "cpu"
        variants = {"cam": ("none", None), "transcam": (cfg.method, cfg.blocks)}
        dtype = np.float16 if cfg.cam_dtype == "float16" else np.float32
        for iid in progress_bar(todo, len(todo), f"cams {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
            item = ds[index[iid]]
            if item.label is None:
                raise ValueError(f"image {iid!r} of {ctx.pseudo_split!r} has no image label (mask, label file or "
                                 "XML): pseudo labels need the image-level labels")
            if one_pass:  # one forward per input serves both variants (same numbers)
                res = multiscale_variants(model, item.image, item.label, variants=variants, scales=prof.scales,
                                          flip=prof.flip, square=prof.square, device=ctx.device)
            else:
                res = {name: multiscale_cam(model, item.image, item.label, scales=prof.scales, flip=prof.flip,
                                            square=prof.square, method=m, blocks=b, device=ctx.device)
                       for name, (m, b) in variants.items()}
            hw = item.image.shape[:2]
            for name in ("cam", "transcam"):  # transcam last: has() needs both
                cams, classes = res[name]
                save_cams(dirs[name] / f"{iid}.npz", cams, classes, size_hw=hw, dtype=dtype,
                          meta={"id": iid, "method": variants[name][0], "scales": list(prof.scales)})
        del model
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.wait_until(lambda: all(has(i) for i in ids), "the CAMs of the other shards")
    if ctx.done("cams") is not None:  # another shard evaluated meanwhile
        return ctx.done("cams")

    # evaluation against the ground truth
    fixed = float(prof.bg_threshold)
    taus = sweep_grid(fixed)
    eval_ids = ctx.eval_ids()
    sweeps = {name: ThresholdSweep(taus, num_classes=ctx.num_fg + 1) for name in dirs}
    for iid in progress_bar(eval_ids, len(eval_ids), "evaluate CAMs", ctx.progress):
        gt = ctx.mask(iid)
        for name, p in dirs.items():
            cams, classes = load_cams(p / f"{iid}.npz")
            sweeps[name].update(cams, classes, gt)
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "fixed_tau": fixed, "class_names": ctx.class_names}
    for name, sw in sweeps.items():
        r = sweep_summary(sw.result(), fixed)  # fractions; summary.json shows percent
        result[name] = {"miou": pct(r["fixed_miou"]), "iou": [pct(v) for v in r["iou_fixed"]], "best_tau": r["best_tau"],
                        "best_miou": pct(r["best_miou"]), "curve": {f"{t:.2f}": pct(v) for t, v in zip(r["taus"], r["mious"])}}
    return ctx.finish("cams", key, result, time.time() - t0)


