"""Command line: ``python -m transcam_nb <stage> ...`` for headless, resumable, sharded runs.

Stages are registered in :data:`STAGES` (name → :class:`Stage`): each has one function that adds
its arguments and one that runs it, so more stages (train, pretrain, crf, affinity,
segmentation, pipeline) are added by writing two functions and one :func:`register_stage`
call. Present stages:

``cams``
    Multi-scale TransCAM inference for every image of a list (REFERENCE.md §3): writes
    ``<out>/cams/<id>.npz`` (format: :mod:`transcam_nb.pseudo`) and, for each background
    threshold τ, ``<out>/labels_t<τ>/<id>.png`` (VOC palette PNG, Eq. 7-8). Every write is
    atomic; finished images are skipped, so a killed run resumes where it stopped. Shard with
    ``--shard i/n`` or run under ``torchrun`` (``RANK``/``WORLD_SIZE`` give the shard; each
    process uses its ``LOCAL_RANK`` GPU)::

        python -m transcam_nb cams --profile paper --checkpoint transcam_6485.pth \\
            --data-root VOCdevkit/VOC2012 --split train --out runs/cams
        torchrun --nproc_per_node=4 -m transcam_nb cams ...   # 4 GPUs, 4 shards

``evaluate``
    Pseudo-label mIoU (REFERENCE.md §5) of a folder of CAM files (``.npz``, or the authors'
    ``.npy`` with ``--allow-pickle``) or label PNGs, against the ground-truth masks. Prints the
    per-class table at a τ fixed in advance and, with ``--sweep``, the authors' τ sweep
    (0.00 … 0.59) with its best τ (chosen on the ground truth, so optimistic: both are shown)::

        python -m transcam_nb evaluate --pred-dir runs/cams/cams --data-root VOCdevkit/VOC2012 \\
            --split train --fixed-tau 0.25 --sweep --json runs/cams/eval.json

``train``
    The classifier (Eq. 6; :mod:`transcam_nb.train`), resumable, under ``torchrun`` with DDP::

        python -m transcam_nb train --profile tiny --out runs/cls        # generates the benchmark
        python -m transcam_nb train --profile paper --voc-root VOCdevkit/VOC2012 \\
            --init Conformer_small_patch16.pth --out runs/cls

``pretrain``
    The tiny profile's formula-driven pretraining (:mod:`transcam_nb.pretrain`).

``pipeline``, ``crf``, ``affinity``, ``randomwalk``, ``segment``
    The rest of the pipeline (:mod:`transcam_nb.pipeline`): every stage in order with
    ``<out>/summary.json``, or one stage at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Stage", "STAGES", "register_stage", "build_parser", "main", "parse_shard"]


@dataclass
class Stage:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: the registry of command-line stages
STAGES: dict[str, Stage] = {}


def register_stage(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> exit code`` as the stage ``name``."""

    def deco(run):
        STAGES[name] = Stage(name, help, add_arguments, run)
        return run

    return deco


# ----------------------------------------------------------------------------- helpers
def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``; without it, torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise SystemExit(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise SystemExit(f"--shard {text}: need 0 <= i < n")
        return i, n
    if "WORLD_SIZE" in env:
        n = int(env["WORLD_SIZE"])
        i = int(env.get("RANK", env.get("LOCAL_RANK", 0)))
        return i, n
    return 0, 1


def _parse_floats(text: str, what: str) -> tuple:
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise SystemExit(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise SystemExit(f"{what} is empty")
    return tuple(int(v) if v.is_integer() and v >= 16 else v for v in vals)


def parse_key_values(items: Sequence[str] | None, option: str = "--model-arg") -> dict:
    """``["k=v", ...]`` → dict, each value parsed as JSON when it can be (else kept as a string)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"{option} must be key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _parse_model_args(items: Sequence[str] | None) -> dict:
    return parse_key_values(items, "--model-arg")


def _tau_dirname(tau: float) -> str:
    return f"labels_t{tau:.2f}"


def _read_ids_and_dataset(args):
    """A VOCDataset in "infer" mode for --data-root and --split / --list."""
    from .data.voc import VOCDataset

    split = args.list if getattr(args, "list", None) else args.split
    if split is None:
        raise SystemExit("give --split NAME or --list FILE")
    return VOCDataset(args.data_root, split, mode="infer", check_files=True)


# ----------------------------------------------------------------------------- cams
def _cams_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="trained TransCAM weights (state_dict, official key names)")
    p.add_argument("--profile", default=None, help="tiny | paper: default model, scales and thresholds "
                   "(default: $TRANSCAM_PROFILE or tiny)")
    p.add_argument("--model", default=None, help="model name, e.g. transcam_small (default: the profile's)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="constructor override, repeatable (e.g. --model-arg embed_dim=64)")
    p.add_argument("--data-root", required=True, help="folder holding JPEGImages/ (VOC layout)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", default=None, help="list name under ImageSets/Segmentation (default: the profile's eval split)")
    g.add_argument("--list", default=None, help="a list file of image ids instead of --split")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scales", default=None, help="comma-separated, e.g. 256,512,768 (default: the profile's)")
    p.add_argument("--no-flip", action="store_true", help="do not add horizontal flips")
    p.add_argument("--aspect", action="store_true",
                   help="aspect-preserving resizes (scale >= 16: long side in px; < 16: factor)")
    p.add_argument("--method", default="transcam", choices=["transcam", "clsattn", "attnagg", "rollout", "none"])
    p.add_argument("--blocks", default="AA", help="AA | AS | AD | index list like 0,3,11 or 6-11")
    p.add_argument("--taus", default=None,
                   help="background thresholds for the label PNGs (default: the profile's 0.60,0.25)")
    p.add_argument("--shard", default=None, help="i/n: process every n-th image starting at i "
                   "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 | auto (default)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast the network")
    p.add_argument("--no-batch-flips", action="store_true",
                   help="run each scale and its flip one at a time (less memory; on CPU no slower)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cam-dtype", default="float32", choices=["float32", "float16"], help="storage dtype of the CAMs")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the list (before sharding)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow down to kill mid-run


def _atomic_json(path: Path, obj) -> None:
    from .artifacts import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


@register_stage("cams", "multi-scale CAMs and pseudo-label PNGs for an image list (resumable, shardable)", _cams_args)
def run_cams(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .cam import multiscale_cam
    from .device import get_device, set_threads
    from .models import create_model, load_checkpoint
    from .profiles import get_profile
    from .pseudo import label_map, load_cams, save_cams, save_label_png
    from .refine import resolve_blocks

    prof = get_profile(args.profile)
    set_threads(args.threads or prof.threads)
    model_name = args.model or prof.model
    overrides = dict(prof.model_overrides) if args.model is None else {}
    overrides.update(_parse_model_args(args.model_arg))
    overrides.setdefault("drop_path_rate", 0.0)
    scales = _parse_floats(args.scales, "--scales") if args.scales else tuple(prof.scales)
    taus = _parse_floats(args.taus, "--taus") if args.taus else tuple(prof.crf_thresholds)
    if args.split is None and args.list is None:
        args.split = prof.eval_split
    ds = _read_ids_and_dataset(args)
    num_fg = ds.num_classes
    ids = list(ds.ids)[: args.limit] if args.limit else list(ds.ids)
    shard, nshard = parse_shard(args.shard)
    todo_idx = list(range(len(ids)))[shard::nshard]

    out = Path(args.out)
    cam_dir = out / "cams"
    cam_dir.mkdir(parents=True, exist_ok=True)
    for t in taus:
        (out / _tau_dirname(t)).mkdir(parents=True, exist_ok=True)
    config = {
        "model": model_name, "model_args": overrides, "checkpoint": str(Path(args.checkpoint).resolve()),
        "scales": list(scales), "flip": not args.no_flip, "square": not args.aspect, "method": args.method,
        "blocks": resolve_blocks(args.blocks, int(overrides.get("depth", 12))), "amp": args.amp,
        "num_classes": num_fg, "class_names": list(ds.class_names),
    }
    cfg_path = out / "cams_config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        same = {k: old.get(k) for k in config} == json.loads(json.dumps(config))
        if not same:
            raise SystemExit(
                f"{out} already holds CAMs made with another configuration ({cfg_path}); use a new --out "
                "folder or delete the old one"
            )
    elif shard == 0:
        _atomic_json(cfg_path, config)

    def done(iid: str) -> tuple[bool, bool]:
        has_cam = (cam_dir / f"{iid}.npz").is_file()
        has_labels = all((out / _tau_dirname(t) / f"{iid}.png").is_file() for t in taus)
        return has_cam, has_labels

    pending = [i for i in todo_idx if not all(done(ids[i]))]
    skipped = len(todo_idx) - len(pending)
    print(f"[cams] shard {shard}/{nshard}: {len(todo_idx)} images, {skipped} already done, {len(pending)} to do; "
          f"out={out}", file=sys.stderr)
    if not pending:
        return 0

    device = get_device(args.device)
    model = None
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
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
            if model is None:
                model = create_model(model_name, num_classes=num_fg + 1, **overrides)
                report = load_checkpoint(model, args.checkpoint, drop_mismatched_heads=False)
                model.to(device).eval()
                print(f"[cams] model {model_name} from {report['file']} on {device}", file=sys.stderr)
            sample = ds[i]
            img = sample.image
            hw = tuple(img.shape[:2])
            if sample.label is None:
                bar.write(f"[cams] {iid}: no image label found; computing CAMs of all classes")
            cams, classes = multiscale_cam(
                model, img, sample.label, scales=scales, flip=not args.no_flip, square=not args.aspect,
                method=args.method, blocks=args.blocks, amp_dtype=amp, device=device,
                batch_flips=not args.no_batch_flips,
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
    return 0


# ----------------------------------------------------------------------------- evaluate
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred-dir", required=True, help="folder of <id>.npz CAM files, authors' <id>.npy, or <id>.png labels")
    p.add_argument("--type", default="auto", choices=["auto", "npz", "npy", "png"])
    p.add_argument("--gt-dir", default=None, help="folder of ground-truth <id>.png masks (default: the dataset's)")
    p.add_argument("--data-root", default=None, help="VOC-layout root (for the id list and masks)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", default=None, help="list name under ImageSets/Segmentation")
    g.add_argument("--list", default=None, help="a list file of image ids")
    p.add_argument("--num-classes", type=int, default=None,
                   help="foreground classes (default: the dataset's, else 20)")
    p.add_argument("--fixed-tau", type=float, default=0.25, help="τ fixed in advance (default 0.25)")
    p.add_argument("--sweep", action="store_true", help="also sweep τ = 0.00 … 0.59 (the authors' curve)")
    p.add_argument("--allow-pickle", action="store_true", help="needed to read the authors' .npy dict files")
    p.add_argument("--allow-missing", action="store_true", help="skip ids without a prediction instead of failing")
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    p.add_argument("--no-progress", action="store_true")


def _eval_items(args):
    """(ids, gt paths, class names) from --data-root/--split/--list/--gt-dir."""
    from .data.voc import VOC_CLASSES, read_class_names, read_id_list

    names = None
    ds = None
    if args.data_root is not None:
        from .data.voc import VOCDataset

        split = args.list or args.split
        if split is None:
            raise SystemExit("with --data-root give --split NAME or --list FILE")
        ds = VOCDataset(args.data_root, split, mode="infer", check_files=False)
        ids = list(ds.ids)
        names = list(ds.class_names)
    elif args.list:
        ids = read_id_list(args.list)
    elif args.gt_dir:
        ids = None  # every prediction that has a mask
    else:
        raise SystemExit("give --data-root with --split/--list, or --gt-dir (with an optional --list)")
    if args.gt_dir:
        gt_dir = Path(args.gt_dir)
        if not gt_dir.is_dir():
            raise SystemExit(f"--gt-dir {gt_dir} is not a folder")
        gt_of = lambda iid, _i=None: gt_dir / f"{iid}.png"
    else:
        def gt_of(iid, i):
            p = ds.mask_path(i)
            if p is None:
                raise SystemExit(f"no ground-truth mask for image {iid!r} under {ds.root} (SegmentationClass/ or "
                                 "SegmentationClassAug/); give --gt-dir")
            return p
    if names is None:
        K = args.num_classes or 20
        names = list(VOC_CLASSES) if K == 20 else [str(k) for k in range(K)]
    if args.num_classes and args.num_classes != len(names):
        raise SystemExit(f"--num-classes {args.num_classes} but the dataset has {len(names)} classes")
    return ids, gt_of, names


def _detect_type(pred_dir: Path, ids, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    for ext in ("npz", "npy", "png"):
        probe = [pred_dir / f"{i}.{ext}" for i in (ids or [])[:20]]
        if (probe and any(p.is_file() for p in probe)) or (not ids and any(pred_dir.glob(f"*.{ext}"))):
            return ext
    raise SystemExit(f"no .npz, .npy or .png predictions found in {pred_dir}")


@register_stage("evaluate", "mIoU of CAM files or label PNGs: per-class table, fixed τ and the τ sweep", _eval_args)
def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .data.voc import load_mask
    from .metrics import DEFAULT_THRESHOLDS, ConfusionMatrix, ThresholdSweep
    from .pseudo import load_cams, load_label_png

    pred_dir = Path(args.pred_dir)
    if not pred_dir.is_dir():
        raise SystemExit(f"--pred-dir {pred_dir} is not a folder")
    ids, gt_of, names = _eval_items(args)
    kind = _detect_type(pred_dir, ids, args.type)
    if ids is None:
        ids = sorted(p.stem for p in pred_dir.glob(f"*.{kind}"))
    index = {iid: i for i, iid in enumerate(ids)}
    missing = [i for i in ids if not (pred_dir / f"{i}.{kind}").is_file()]
    if missing and not args.allow_missing:
        raise SystemExit(f"{len(missing)} of {len(ids)} images have no prediction in {pred_dir} "
                         f"(first: {missing[:5]}); use --allow-missing to skip them")
    missing_set = set(missing)
    use = [i for i in ids if i not in missing_set]
    C = len(names) + 1
    cls_names = ["background"] + list(names)

    taus = sorted(set(([round(t, 10) for t in DEFAULT_THRESHOLDS] if args.sweep else []) + [args.fixed_tau]))
    sweep = ThresholdSweep(taus, num_classes=C) if kind != "png" else None
    cm_png = ConfusionMatrix(C, class_names=cls_names) if kind == "png" else None
    for iid in tqdm(use, desc="evaluate", disable=args.no_progress, dynamic_ncols=True):
        gt = load_mask(gt_of(iid, index[iid]))
        if kind == "png":
            cm_png.update(load_label_png(pred_dir / f"{iid}.png"), gt)
        else:
            cams, classes = load_cams(pred_dir / f"{iid}.{kind}", allow_pickle=args.allow_pickle)
            if cams.shape[0] and cams.shape[1:] != gt.shape:
                raise SystemExit(f"{iid}: CAMs are {cams.shape[1:]} but the mask is {gt.shape}")
            sweep.update(cams, classes, gt)

    result = {"pred_dir": str(pred_dir), "type": kind, "images": len(use), "missing": len(missing)}
    if kind == "png":
        cm = cm_png
        result["miou"] = cm.miou()
    else:
        res = sweep.result()
        for m in res.matrices:
            m.class_names = cls_names
        cm = res.at(args.fixed_tau)
        result["fixed_tau"] = args.fixed_tau
        result["miou_fixed_tau"] = cm.miou()
        if args.sweep:
            result["best_tau"] = res.best_tau
            result["best_miou"] = res.best_miou
            result["curve"] = {f"{t:.2f}": float(v) for t, v in zip(res.thresholds, res.miou)}
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
        _atomic_json(Path(args.json), result)
    return 0


# ----------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="tiny | paper (default: $TRANSCAM_PROFILE or tiny)")
    p.add_argument("--out", required=True, help="run folder: last.pt, classifier.pt, metrics.jsonl, summary.json")
    p.add_argument("--voc-root", "--data-root", dest="data_root", default=None,
                   help="VOC 2012 folder holding JPEGImages/ (the tiny profile generates its benchmark without it)")
    p.add_argument("--sbd-root", default=None, help="SBD benchmark_RELEASE (or converted SegmentationClassAug) "
                   "for building train_aug")
    p.add_argument("--cls-labels", default=None, help="image-label file: the authors' cls_labels.npy or JSON")
    p.add_argument("--allow-pickle", action="store_true", help="needed to read the authors' pickled cls_labels.npy")
    p.add_argument("--init", default=None, help="ImageNet Conformer checkpoint to start from (heads are dropped)")
    p.add_argument("--from-scratch", action="store_true",
                   help="allow the paper profile to start from random weights (it refuses without --init)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/last.pt when it exists (default: yes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile field, repeatable (e.g. --set lr=1e-4 --set resize_long=[256,512])")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 | mps | auto (default: the profile's)")
    p.add_argument("--max-steps", type=int, default=None, help="step budget (overrides epochs; the lr schedule follows)")
    p.add_argument("--amp", default=None, choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision (default: the profile's, auto = bf16 or fp16+scaler on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics-log record")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="checkpoint every N minutes (and every epoch)")
    p.add_argument("--checkpoint-every-steps", type=int, default=None, help="also checkpoint every N steps")
    p.add_argument("--no-progress", action="store_true")


@register_stage("train", "train the TransCAM classifier (Eq. 6): resumable, AMP, DDP under torchrun", _train_args)
def run_train(args: argparse.Namespace) -> int:
    from .profiles import get_profile
    from .models import CheckpointError
    from .engine import NonFiniteLossError
    from .train import parse_set_overrides, train_classifier

    prof = get_profile(args.profile)
    try:
        overrides = parse_set_overrides(args.set, prof)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.amp is not None:
        overrides["amp"] = args.amp
    if args.compile:
        overrides["compile"] = True
    if args.channels_last:
        overrides["channels_last"] = True
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.device is not None:
        overrides["device"] = args.device
    prof = prof.replace(**overrides)
    rank = int(os.environ.get("RANK", "0"))
    try:
        summary = train_classifier(
            prof, args.out, resume=args.resume, init=args.init, max_steps=args.max_steps, data_root=args.data_root,
            sbd_root=args.sbd_root, cls_labels=args.cls_labels, allow_pickle=args.allow_pickle,
            log_every=args.log_every, checkpoint_minutes=args.checkpoint_minutes,
            checkpoint_every_steps=args.checkpoint_every_steps, progress=not args.no_progress,
            from_scratch=args.from_scratch)
    except NonFiniteLossError as e:
        print(f"[train] stopped: {e}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError, CheckpointError) as e:  # bad paths / settings: say what, no traceback
        raise SystemExit(f"[train] {type(e).__name__}: {e}") from None
    if rank == 0:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


# ----------------------------------------------------------------------------- pretrain
def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from .pretrain import add_arguments

    add_arguments(p)


@register_stage("pretrain", "pretrain the profile's Conformer on formula-driven texture scenes (issue 8; "
                "transcam_nb/pretrain.py)", _pretrain_args)
def run_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import run_cli

    return run_cli(args)


# ----------------------------------------------------------------------------- pipeline (issue 6)
def _pipeline_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_arguments

    add_arguments(p)


@register_stage("pipeline", "every stage in order (classifier, CAMs, CRF, AffinityNet, random walk, DeepLab): "
                "resumable, shardable, writes OUT/summary.json (transcam_nb/pipeline.py)", _pipeline_args)
def run_pipeline_stage(args: argparse.Namespace) -> int:
    from .pipeline import run_cli

    return run_cli(args)


def _crf_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_arguments

    add_arguments(p, stage="crf")


@register_stage("crf", "pipeline stage: la/ha labels (argmax + dense CRF) from the TransCAM maps in OUT/cams", _crf_args)
def run_crf_stage(args: argparse.Namespace) -> int:
    from .pipeline import run_cli

    return run_cli(args)


def _affinity_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_arguments

    add_arguments(p, stage="affinity")


@register_stage("affinity", "pipeline stage: train AffinityNet on OUT/crf (resumable)", _affinity_args)
def run_affinity_stage(args: argparse.Namespace) -> int:
    from .pipeline import run_cli

    return run_cli(args)


def _randomwalk_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_arguments

    add_arguments(p, stage="randomwalk")


@register_stage("randomwalk", "pipeline stage: random walk of the CAMs over AffinityNet's affinities (+ CRF)",
                _randomwalk_args)
def run_randomwalk_stage(args: argparse.Namespace) -> int:
    from .pipeline import run_cli

    return run_cli(args)


def _segment_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import add_arguments

    add_arguments(p, stage="segment")


@register_stage("segment", "pipeline stage: train DeepLab on the random-walk labels, score it on val", _segment_args)
def run_segment_stage(args: argparse.Namespace) -> int:
    from .pipeline import run_cli

    return run_cli(args)


# ----------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transcam_nb", description="TransCAM book: headless pipeline stages")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    sub.required = True
    for st in STAGES.values():
        sp = sub.add_parser(st.name, help=st.help, description=st.help)
        st.add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(STAGES[args.stage].run(args) or 0)
