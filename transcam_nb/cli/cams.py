"""The ``cams`` and ``evaluate`` commands: multi-scale CAMs and label PNGs for an image list
(resumable, shardable), and the mIoU of CAM files or label PNGs against the ground truth."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..artifacts import config_hash, read_json, to_jsonable, write_json
from .common import (UsageError, one_line, _DeprecatedAlias, add_checkpoint, add_data_root, add_out, add_profile, add_runtime,
                     add_set, add_shard, parse_floats, parse_model_args, parse_shard, profile_from_args,
                     register_stage)

log = logging.getLogger("transcam_nb.cli")

__all__ = ["run_cams", "run_evaluate"]


def cam_variant(method: str) -> str:
    """The folder of a refinement method's CAMs under ``OUT/cams``: ``cam`` for ``none`` (Eq. 1),
    else the method's name (``transcam``, as the pipeline's cams stage)."""
    return "cam" if method == "none" else method


#: what reading an image file raises when it is missing, truncated or not an image (PIL raises
#: ``UnidentifiedImageError``, an ``OSError``, and for some broken files ``SyntaxError``)
UNREADABLE = (OSError, ValueError, SyntaxError)


def report_name(shard: int, nshard: int) -> str:
    """The file under ``OUT/cams`` where a shard's run reports what it did and which images it skipped."""
    return "report.json" if nshard == 1 else f"report.{shard}-of-{nshard}.json"


def _tau_dirname(tau: float) -> str:
    return f"labels_t{tau:.2f}"


def _read_ids_and_dataset(args, prof, check_files: bool = True):
    """The profile's dataset (VOC layout, or COCO for ``--profile coco``) in "infer" mode for
    --data-root and --split / --list (:func:`transcam_nb.data.roots.build_dataset`)."""
    from ..data.roots import build_dataset

    split = args.list if getattr(args, "list", None) else args.split
    if split is None:
        raise UsageError("give --split NAME or --list FILE")
    if getattr(args, "list", None) and prof.dataset == "coco":
        raise UsageError("--list FILE is for VOC-layout data; with --profile coco give --split train2014, val2014, ...")
    return build_dataset(prof, split, "infer", data_root=args.data_root, check_files=check_files, progress=False)


# ----------------------------------------------------------------------------- cams
def _cams_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p, required=True)
    add_profile(p, "tiny | paper | coco: default model, scales, thresholds and dataset (default: $TRANSCAM_PROFILE "
                "or tiny)")
    add_set(p)
    p.add_argument("--model", default=None, help="model name, e.g. transcam_small (default: the profile's)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="constructor override, repeatable (e.g. --model-arg embed_dim=64)")
    add_data_root(p, required=True, help="folder holding JPEGImages/ (VOC layout); --profile coco: the MS COCO "
                  "folder holding annotations/instances_*.json")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", default=None, help="list name under ImageSets/Segmentation, or a COCO split (train2014, "
                   "val2014, ...) (default: the profile's eval split)")
    g.add_argument("--list", default=None, help="a list file of image ids instead of --split")
    add_out(p)
    p.add_argument("--scales", default=None, help="comma-separated, e.g. 256,512,768 (default: the profile's)")
    p.add_argument("--no-flip", action="store_true", help="do not add horizontal flips")
    p.add_argument("--aspect", action="store_true",
                   help="aspect-preserving resizes (scale >= 16: long side in px; < 16: factor)")
    p.add_argument("--method", default="transcam", choices=["transcam", "clsattn", "attnagg", "rollout", "none"])
    p.add_argument("--blocks", default="AA", help="AA | AS | AD | index list like 0,3,11 or 6-11")
    p.add_argument("--taus", default=None,
                   help="background thresholds for the label PNGs (default: the profile's 0.60,0.25)")
    add_shard(p)
    add_runtime(p)
    p.add_argument("--precision", "--amp", default="fp32", choices=["fp32", "bf16", "fp16", "none"],
                   action=_DeprecatedAlias, deprecated=("--amp",),
                   help="fp32 (default, the authors' numbers) | bf16 (autocast, channels_last) | fp16 (CUDA)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "explicit"],
                   help="sdpa: Eq. 5 as fused attention, no N×N matrix (default) | explicit: the attention maps")
    p.add_argument("--no-batch-flips", action="store_true",
                   help="run each scale and its flip one at a time (less memory; on CPU no slower)")
    p.add_argument("--cam-dtype", default="float32", choices=["float32", "float16"], help="storage dtype of the CAMs")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the list (before sharding)")
    p.add_argument("--on-error", default="abort", choices=["abort", "skip"],
                   help="an image that cannot be read: abort naming it (default), or skip it and list it in "
                        "OUT/cams/report.json")
    p.add_argument("--sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow down to kill mid-run


@register_stage("cams", "multi-scale CAMs and pseudo-label PNGs for an image list (resumable, shardable)", _cams_args)
def run_cams(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from ..cam import multiscale_cam
    from ..device import get_device, resolve_precision, set_threads
    from ..models import CheckpointError, create_model, load_checkpoint
    from ..pseudo import label_map, load_cams, save_cams, save_label_png
    from ..refine import resolve_blocks

    prof = profile_from_args(args, data_root=False, device=None, threads=None)
    set_threads(args.threads or prof.threads)
    model_name = args.model or prof.model
    overrides = dict(prof.model_overrides) if args.model is None else {}
    overrides.update(parse_model_args(args.model_arg))
    overrides.setdefault("drop_path_rate", 0.0)
    scales = parse_floats(args.scales, "--scales") if args.scales else tuple(prof.scales)
    taus = parse_floats(args.taus, "--taus") if args.taus else tuple(prof.crf_thresholds)
    if args.split is None and args.list is None:
        args.split = prof.eval_split
    # with --on-error skip a missing image is skipped with the unreadable ones, not refused up front
    ds = _read_ids_and_dataset(args, prof, check_files=args.on_error != "skip")
    num_fg = ds.num_classes
    ids = list(ds.ids)[: args.limit] if args.limit else list(ds.ids)
    shard, nshard = parse_shard(args.shard)
    todo_idx = list(range(len(ids)))[shard::nshard]

    out = Path(args.out)
    # the pipeline's layout: OUT/cams/<variant>/<id>.npz ("cam" for method none, else the method's
    # name: "transcam" as the pipeline's cams stage) and OUT/cams/config.json {"stage", "key", "spec"}
    cam_dir = out / "cams" / cam_variant(args.method)
    try:
        blocks = resolve_blocks(args.blocks, int(overrides.get("depth", 12)))
    except ValueError as e:
        raise UsageError(f"--blocks {args.blocks!r}: {e}") from None
    config = {
        "model": model_name, "model_args": overrides, "checkpoint": str(Path(args.checkpoint).resolve()),
        "scales": list(scales), "flip": not args.no_flip, "square": not args.aspect, "method": args.method,
        "blocks": blocks, "precision": {"none": "fp32"}.get(args.precision, args.precision),
        "num_fg": num_fg, "class_names": list(ds.class_names),
    }
    spec = to_jsonable(config)
    cfg_path = out / "cams" / "config.json"
    old = read_json(cfg_path)
    if old is not None and old.get("spec") != spec:
        raise UsageError(
            f"{out.name} already holds CAMs made with another configuration (cams/config.json); use a new --out "
            "folder or delete the old one"
        )
    device = get_device(None if prof.device == "auto" else prof.device)
    try:
        precision = resolve_precision(args.precision, device, arg="--precision")
    except ValueError as e:
        raise UsageError(str(e)) from None

    def build_model():
        m = create_model(model_name, num_classes=num_fg + 1, **overrides)
        try:
            rep = load_checkpoint(m, args.checkpoint, drop_mismatched_heads=False)
        except CheckpointError as e:
            raise UsageError(f"--checkpoint: {one_line(e)}") from None
        log.info("[cams] model %s from %s on %s", model_name, Path(rep["file"]).name, device)
        return m.to(device).eval()

    # every input is checked (the checkpoint loads into the network) before anything is written,
    # so a run that fails here leaves no config.json that would refuse the corrected run
    model = build_model() if old is None else None
    cam_dir.mkdir(parents=True, exist_ok=True)
    for t in taus:
        (out / _tau_dirname(t)).mkdir(parents=True, exist_ok=True)
    if old is None and shard == 0:
        write_json(cfg_path, {"stage": "cams", "command": "cams", "key": config_hash(spec), "spec": spec})

    def done(iid: str) -> tuple[bool, bool]:
        has_cam = (cam_dir / f"{iid}.npz").is_file()
        has_labels = all((out / _tau_dirname(t) / f"{iid}.png").is_file() for t in taus)
        return has_cam, has_labels

    pending = [i for i in todo_idx if not all(done(ids[i]))]
    already = len(todo_idx) - len(pending)
    log.info("[cams] shard %d/%d: %d images, %d already done, %d to do", shard, nshard, len(todo_idx), already,
             len(pending))
    unreadable: list[dict] = []
    cam_dtype = np.float16 if args.cam_dtype == "float16" else np.float32
    bar = tqdm(pending, desc=f"cams {shard}/{nshard}", disable=args.no_progress, position=shard if nshard > 1 else 0,
               dynamic_ncols=True)
    for i in bar:
        iid = ids[i]
        has_cam, _ = done(iid)
        if has_cam:  # killed between the CAM file and its label PNGs: no forward needed
            cams, classes = load_cams(cam_dir / f"{iid}.npz")
            hw = tuple(np.load(cam_dir / f"{iid}.npz")["size_hw"].tolist())
        else:
            try:
                sample = ds[i]
            except UNREADABLE as e:  # a missing, truncated or corrupt image file
                path = ds.image_path(i)
                if args.on_error != "skip":
                    raise UsageError(f"image {iid!r} ({path}) cannot be read ({type(e).__name__}: {one_line(e)}); "
                                     "fix or remove it, or pass --on-error skip to skip unreadable images") from None
                log.warning("[cams] skipped %s: %s", path, one_line(e))
                unreadable.append({"id": iid, "file": str(path), "error": f"{type(e).__name__}: {one_line(e)}"})
                continue
            if model is None:
                model = build_model()
            img = sample.image
            hw = tuple(img.shape[:2])
            if sample.label is None:
                bar.write(f"[cams] {iid}: no image label found; computing CAMs of all classes")
            cams, classes = multiscale_cam(
                model, img, sample.label, scales=scales, flip=not args.no_flip, square=not args.aspect,
                method=args.method, blocks=args.blocks, precision=precision, attention=args.attention, device=device,
                batch_flips=False if args.no_batch_flips else None,
            )
            save_cams(cam_dir / f"{iid}.npz", cams, classes, size_hw=hw, dtype=cam_dtype,
                      meta={"id": iid, "method": args.method, "scales": list(scales)})
            cams = cams.astype(cam_dtype).astype(np.float32)  # the labels follow the stored CAMs
        for t in taus:
            p = out / _tau_dirname(t) / f"{iid}.png"
            if not p.is_file():
                save_label_png(p, label_map(cams, classes, t, num_fg=num_fg, shape=hw))
        if args.sleep:
            time.sleep(args.sleep)
    report = {"shard": [shard, nshard], "images": len(todo_idx), "already_done": already,
              "computed": len(pending) - len(unreadable), "skipped": unreadable}
    write_json(out / "cams" / report_name(shard, nshard), report)
    if unreadable:
        log.warning("[cams] %d unreadable image(s) skipped (listed in %s)", len(unreadable),
                    out / "cams" / report_name(shard, nshard))
    return 0


# ----------------------------------------------------------------------------- evaluate
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred-dir", required=True, help="folder of <id>.npz CAM files, authors' <id>.npy, or <id>.png labels")
    p.add_argument("--type", default="auto", choices=["auto", "npz", "npy", "png"])
    p.add_argument("--gt-dir", default=None, help="folder of ground-truth <id>.png masks (default: the dataset's)")
    add_data_root(p, help="VOC-layout root (for the id list and masks); --profile coco: the MS COCO folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", default=None, help="list name under ImageSets/Segmentation")
    g.add_argument("--list", default=None, help="a list file of image ids")
    p.add_argument("--num-fg", "--num-classes", dest="num_fg", type=int, default=None, action=_DeprecatedAlias,
                   deprecated=("--num-classes",),
                   help="foreground classes K (default: the dataset's, else 20); --num-classes is a deprecated alias")
    add_profile(p, "tiny | paper | coco: the τ fixed in advance is its bg_threshold; coco: --data-root is a COCO "
                "folder (default: $TRANSCAM_PROFILE or tiny)")
    add_set(p)
    p.add_argument("--fixed-tau", type=float, default=None, help="τ fixed in advance (default: the profile's "
                   "bg_threshold)")
    p.add_argument("--sweep", action="store_true", help="also sweep τ over metrics.DEFAULT_THRESHOLDS "
                   "(0.00 … 0.90, which holds the authors' 0.00 … 0.59)")
    p.add_argument("--allow-pickle", action="store_true", help="needed to read the authors' .npy dict files")
    p.add_argument("--allow-missing", action="store_true", help="skip ids without a prediction instead of failing")
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    p.add_argument("--no-progress", action="store_true")


def _eval_items(args):
    """(ids, ``gt_of(id, index)`` -> (mask, its file), class names) from --data-root/--split/--list/--gt-dir."""
    from ..config import VOC_CLASSES
    from ..data.voc import load_mask, read_id_list

    names = None
    ds = None
    if args.data_root is not None:
        if args.list is None and args.split is None:
            raise UsageError("with --data-root give --split NAME or --list FILE")
        ds = _read_ids_and_dataset(args, profile_from_args(args, data_root=False), check_files=False)
        ids = list(ds.ids)
        names = list(ds.class_names)
    elif args.list:
        ids = read_id_list(args.list)
    elif args.gt_dir:
        ids = None  # every prediction that has a mask
    else:
        raise UsageError("give --data-root with --split/--list, or --gt-dir (with an optional --list)")
    if args.gt_dir:
        gt_dir = Path(args.gt_dir)
        if not gt_dir.is_dir():
            raise UsageError(f"--gt-dir {gt_dir} is not a folder")
        def gt_of(iid, _i=None):
            return load_mask(gt_dir / f"{iid}.png"), gt_dir / f"{iid}.png"
    else:
        def gt_of(iid, i):  # (mask, where it comes from): a PNG, or the COCO annotations rasterised
            if ds.mask_path(i) is None:
                raise UsageError(f"no ground-truth mask for image {iid!r} under {ds.root} (SegmentationClass/ or "
                                 "SegmentationClassAug/); give --gt-dir")
            return ds.mask(i), ds.mask_path(i)
    if names is None:
        K = args.num_fg or 20
        names = list(VOC_CLASSES) if K == 20 else [str(k) for k in range(K)]
    if args.num_fg and args.num_fg != len(names):
        raise UsageError(f"--num-fg {args.num_fg} but the dataset has {len(names)} classes")
    return ids, gt_of, names


def _detect_type(pred_dir: Path, ids, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    for ext in ("npz", "npy", "png"):
        probe = [pred_dir / f"{i}.{ext}" for i in (ids or [])[:20]]
        if (probe and any(p.is_file() for p in probe)) or (not ids and any(pred_dir.glob(f"*.{ext}"))):
            return ext
    raise UsageError(f"no .npz, .npy or .png predictions found in {pred_dir}")


@register_stage("evaluate", "mIoU of CAM files or label PNGs: per-class table, fixed τ and the τ sweep", _eval_args)
def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..metrics import DEFAULT_THRESHOLDS, ConfusionMatrix, ThresholdSweep, sweep_grid, sweep_summary
    from ..pseudo import load_cams, load_label_png

    if args.fixed_tau is None:
        args.fixed_tau = float(profile_from_args(args, data_root=False).bg_threshold)
    pred_dir = Path(args.pred_dir)
    if not pred_dir.is_dir():
        raise UsageError(f"--pred-dir {pred_dir} is not a folder")
    ids, gt_of, names = _eval_items(args)
    kind = _detect_type(pred_dir, ids, args.type)
    if ids is None:
        ids = sorted(p.stem for p in pred_dir.glob(f"*.{kind}"))
    index = {iid: i for i, iid in enumerate(ids)}
    missing = [i for i in ids if not (pred_dir / f"{i}.{kind}").is_file()]
    if missing and not args.allow_missing:
        raise UsageError(f"{len(missing)} of {len(ids)} images have no prediction in {pred_dir} "
                         f"(first: {missing[:5]}); use --allow-missing to skip them")
    missing_set = set(missing)
    use = [i for i in ids if i not in missing_set]
    C = len(names) + 1
    cls_names = ["background"] + list(names)

    taus = sweep_grid(args.fixed_tau, DEFAULT_THRESHOLDS if args.sweep else ())
    sweep = ThresholdSweep(taus, num_classes=C) if kind != "png" else None
    cm_png = ConfusionMatrix(C, class_names=cls_names) if kind == "png" else None
    for iid in tqdm(use, desc="evaluate", disable=args.no_progress, dynamic_ncols=True):
        (gt, gt_path), pred_path = gt_of(iid, index[iid]), pred_dir / f"{iid}.{kind}"
        if kind == "png":
            pred = load_label_png(pred_path)
            if pred.shape != gt.shape:
                raise UsageError(f"{iid}: the label PNG {pred_path} is {pred.shape} but the mask is {gt.shape}")
        else:
            pred, classes = load_cams(pred_path, allow_pickle=args.allow_pickle)
            if pred.shape[0] and pred.shape[1:] != gt.shape:
                raise UsageError(f"{iid}: CAMs are {pred.shape[1:]} but the mask is {gt.shape}")
        try:
            cm_png.update(pred, gt) if kind == "png" else sweep.update(pred, classes, gt)
        except ValueError as e:  # what the files hold: mask values or class indices outside the classes
            raise UsageError(f"{iid}: {e} (mask {gt_path}, prediction {pred_path}; expected "
                             f"{len(names)} foreground classes, --num-fg)") from None

    result = {"pred_dir": str(pred_dir), "type": kind, "images": len(use), "missing": len(missing)}
    if kind == "png":
        cm = cm_png
        result["miou"] = cm.miou()
    else:
        res = sweep.result()
        for m in res.matrices:
            m.class_names = cls_names
        cm = res.at(args.fixed_tau)
        summ = sweep_summary(res, args.fixed_tau)
        result["fixed_tau"] = summ["fixed_tau"]
        result["miou_fixed_tau"] = summ["fixed_miou"]
        if args.sweep:
            result["best_tau"] = summ["best_tau"]
            result["best_miou"] = summ["best_miou"]
            result["curve"] = {f"{t:.2f}": v for t, v in zip(summ["taus"], summ["mious"])}
    result["per_class"] = cm.to_dict()

    import pandas as pd

    with pd.option_context("display.max_rows", 100, "display.width", 120, "display.float_format", "{:.4f}".format):
        head = f"τ = {args.fixed_tau:.2f} (fixed in advance)" if kind != "png" else "label PNGs"
        print(f"\nper-class IoU, {head}, {len(use)} images:")
        print(cm.table().to_string())
    if kind != "png":
        print(f"\nmIoU at fixed τ = {args.fixed_tau:.2f}: {result['miou_fixed_tau']:.4f}")
        if args.sweep:
            curve = "  ".join(f"{t:.2f}:{v:.4f}" for t, v in zip(res.thresholds, res.miou))
            print(f"τ curve: {curve}")
            print(f"best τ = {res.best_tau:.2f} (chosen on the ground truth): mIoU {res.best_miou:.4f}")
    else:
        print(f"\nmIoU: {result['miou']:.4f}")
    if args.json:
        write_json(Path(args.json), result)
    return 0
