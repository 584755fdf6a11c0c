"""The whole weakly-supervised pipeline as resumable on-disk stages (paper §4.4, issue 6).

Data flow (REFERENCE.md §3, §7, §8), one folder per stage under the run folder ``DIR``::

    classifier  the trained TransCAM classifier (cached by workflow.classifier, trained into
                DIR/classifier, or a checkpoint file you give)
    cams        multi-scale CAMs of the pseudo-label images: DIR/cams/cam/<id>.npz (plain CAM,
                Eq. 1) and DIR/cams/transcam/<id>.npz (TransCAM, Eq. 5); both evaluated against
                the ground truth at the τ fixed in advance and over the authors' τ sweep
    crf         the PSA labels: DIR/crf/la/<id>.png (τ = 0.60, confident foreground) and
                DIR/crf/ha/<id>.png (τ = 0.25, confident background), argmax + dense CRF
                (crf.make_la_ha_labels, REFERENCE.md §3)
    affinity    AffinityNet trained on the la/ha pairs (REFERENCE.md §7.1): DIR/affinity/
                affinity_last.pt (resumable), affinity_net.pt
    randomwalk  the TransCAM CAMs diffused over the learnt affinities (REFERENCE.md §7.2):
                DIR/randomwalk/rw/<id>.png and, with the CRF of step 9, rw_crf/<id>.png
    segment     DeepLab trained on the random-walk labels (REFERENCE.md §8): DIR/segment/last.pt,
                model.pt, log.jsonl, and its multi-scale predictions on the validation split
                DIR/segment/val_pred/<id>.png with metrics.json

Every stage writes ``DIR/<stage>/config.json`` (what determines it, including the key of the
stage it reads) when it starts and ``DIR/<stage>/DONE.json`` (its results and wall time) when
it is complete, both atomically. A finished stage is skipped; a started one resumes: per-image
stages skip the images whose outputs exist (every file is written atomically, so a killed run
leaves no half file), training stages continue from their last checkpoint. A folder made with
other settings is refused with a clear error rather than mixed.

Per-image stages (cams, crf, randomwalk) can be sharded: ``shard=(i, n)`` processes every
n-th image from i (``--shard i/n`` or torchrun's ``RANK``/``WORLD_SIZE`` on the command line).
A shard that finishes its part before the others either stops (``wait=False``; run the command
again later) or polls until the other shards have written theirs (``wait=True``, the default
under torchrun). Training stages run in shard 0 only, the others wait for its ``DONE.json``.

:func:`run_pipeline` runs the stages in order and writes ``DIR/summary.json``: the mIoU (percent)
after each stage, ``cam``, ``transcam``, ``random_walk``, ``random_walk_crf`` (pseudo labels on
the pseudo-label images with ground truth) and ``deeplab_val`` (DeepLab on the validation
split), plus ``details`` (τ, image counts, per-class IoUs, wall times). All headline numbers
use settings fixed in advance (τ = the profile's ``bg_threshold``, the random walk's 0.42);
the τ picked on the ground truth is reported beside them in ``details``.

The command line is ``python -m transcam_nb pipeline --profile tiny --out DIR`` (and the thin
per-stage commands ``crf``, ``affinity``, ``randomwalk``, ``segment``); see :func:`add_arguments`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .artifacts import atomic_write, config_hash
from .profiles import Profile, get_profile

__all__ = [
    "STAGES",
    "SUMMARY_KEYS",
    "PipelineConfig",
    "PIPELINE_DEFAULTS",
    "pipeline_config",
    "StageIncomplete",
    "PipelineContext",
    "stage_classifier",
    "stage_cams",
    "stage_crf",
    "stage_affinity",
    "stage_randomwalk",
    "stage_segment",
    "load_classifier",
    "affinity_config",
    "build_affinity_net",
    "seg_config",
    "run_stage",
    "run_pipeline",
    "default_out_dir",
    "read_summary",
    "TABLE_ROWS",
    "results_table",
    "load_example",
    "read_deeplab_log",
    "read_affinity_history",
    "add_arguments",
    "run_cli",
]

#: the stages, in pipeline order
STAGES = ("classifier", "cams", "crf", "affinity", "randomwalk", "segment")
#: the headline numbers of summary.json (mIoU in percent) and the stage that produces each
SUMMARY_KEYS = {"cam": "cams", "transcam": "cams", "random_walk": "randomwalk", "random_walk_crf": "randomwalk",
                "deeplab_val": "segment"}
_PER_IMAGE = ("cams", "crf", "randomwalk")


# =============================================================================================
# configuration
# =============================================================================================
@dataclass(frozen=True)
class PipelineConfig:
    """How big each stage is and where its inputs come from (the profile says the rest).

    ``classifier``: ``"workflow"`` (the book's cached classifier, :func:`transcam_nb.workflow.classifier`,
    trained on first use and shared with the chapters), ``"train"`` (train into ``DIR/classifier``
    with :func:`transcam_nb.train.train_classifier`, resumable; ``classifier_steps`` overrides the
    step budget) or a checkpoint file (e.g. the authors' released weights for the paper profile).

    ``pseudo_split`` / ``pseudo_limit``: the images that get pseudo labels (default the profile's
    ``train_split``; the first ``pseudo_limit`` of its list). ``pseudo_eval_split``: score the
    pseudo labels only on the images of this list (the paper: VOC ``train``, 1,464 images with
    masks, inside ``train_aug``); ``None``: every pseudo-label image that has a mask.
    ``val_split`` / ``val_limit``: where DeepLab is scored.
    """

    classifier: str = "workflow"
    classifier_steps: int | None = None
    pseudo_split: str | None = None
    pseudo_limit: int | None = None
    pseudo_eval_split: str | None = None
    method: str = "transcam"
    blocks: str = "AA"
    one_pass: bool | None = None  # CAM and TransCAM from one forward per input (None: on CPU)
    cam_dtype: str = "float32"
    affinity: str = "paper"  # AFFINITY_PRESETS name
    affinity_overrides: dict = field(default_factory=dict)
    affinity_weights: str | None = None  # ImageNet backbone state dict for AffinityNet
    segmentation: str = "paper"  # SEG_PRESETS name
    seg_overrides: dict = field(default_factory=dict)
    seg_labels: str = "rw_crf"  # "rw_crf" (the reference: infer_aff.py --crf True) or "rw"
    val_split: str | None = None
    val_limit: int | None = None
    from_scratch: bool = False  # let paper-profile networks start from random weights (else they refuse)

    def replace(self, **changes) -> "PipelineConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown pipeline setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: per-profile defaults. The tiny sizes keep every stage after the (cached) classifier within about
#: three minutes of one CPU thread: pseudo labels for 64 of the 2,000 training images
#: (AffinityNet: 2 epochs = 32 steps), DeepLab trained for 100 iterations of 4 crops and scored
#: on 50 of the 200 validation images.
PIPELINE_DEFAULTS = {
    "tiny": dict(pseudo_limit=64, val_limit=50, affinity="tiny", segmentation="tiny",
                 seg_overrides={"iters": 100}),
    "paper": dict(pseudo_eval_split="train", affinity="paper", segmentation="paper"),
}


def pipeline_config(profile: Profile | str | None = None, **overrides) -> PipelineConfig:
    """The :class:`PipelineConfig` of a profile (``PIPELINE_DEFAULTS``) with overrides.

    ``$TRANSCAM_CLASSIFIER`` (``workflow``, ``train`` or a weights file) replaces the default
    ``classifier="workflow"``, e.g. to run the pipeline from the authors' released weights."""
    name = profile.name if isinstance(profile, Profile) else (profile or os.environ.get("TRANSCAM_PROFILE", "tiny"))
    base = dict(PIPELINE_DEFAULTS.get(name, {}))
    if os.environ.get("TRANSCAM_CLASSIFIER"):
        base["classifier"] = os.environ["TRANSCAM_CLASSIFIER"]
    base.update(overrides)
    return PipelineConfig().replace(**base)


class StageIncomplete(RuntimeError):
    """A sharded stage whose other shards have not finished (``wait=False``)."""


# =============================================================================================
# small helpers
# =============================================================================================
def _write_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _norm(obj):
    """JSON round trip (tuples → lists), so stored and fresh configs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _pct(x: float) -> float:
    return round(100.0 * float(x), 4)


@dataclass
class PipelineContext:
    """What every stage function receives: the profile, the settings and the run folder."""

    profile: Profile
    config: PipelineConfig
    out_dir: Path
    shard: tuple[int, int] = (0, 1)
    wait: bool = False
    poll_s: float = 5.0
    progress: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    # -- folders and markers -------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage

    def done_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "DONE.json"

    def done(self, stage: str) -> dict | None:
        """The stage's DONE.json, or None when it is not complete."""
        return _read_json(self.done_path(stage))

    def require(self, stage: str) -> dict:
        d = self.done(stage)
        if d is None:
            raise RuntimeError(f"pipeline stage {stage!r} is not complete in {self.out_dir} (no {self.done_path(stage)}); "
                               f"run it first (stages run in the order {', '.join(STAGES)})")
        return d

    # -- data ----------------------------------------------------------------------------
    @property
    def device(self):
        from .device import get_device

        if "device" not in self._cache:
            dev = get_device(None if self.profile.device == "auto" else self.profile.device)
            if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
                import torch

                dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
            self._cache["device"] = dev
        return self._cache["device"]

    @property
    def data_root(self) -> Path:
        if "root" not in self._cache:
            from .data.roots import resolve_data_root

            self._cache["root"] = Path(resolve_data_root(self.profile, progress=self.progress))
        return self._cache["root"]

    def dataset(self, split: str):
        """A :class:`~transcam_nb.data.voc.VOCDataset` of ``split`` in "infer" mode (cached)."""
        key = ("ds", split)
        if key not in self._cache:
            from .data.voc import VOCDataset

            p = self.profile
            self._cache[key] = VOCDataset(self.data_root, split, mode="infer", sbd_root=p.sbd_root,
                                          cls_labels=p.cls_labels, label_source=p.label_source)
        return self._cache[key]

    @property
    def pseudo_split(self) -> str:
        return self.config.pseudo_split or self.profile.train_split

    @property
    def val_split(self) -> str:
        return self.config.val_split or self.profile.val_split

    def pseudo_ids(self) -> list[str]:
        ids = list(self.dataset(self.pseudo_split).ids)
        return ids[: self.config.pseudo_limit] if self.config.pseudo_limit else ids

    def eval_ids(self) -> list[str]:
        """Pseudo-label images that are scored: those with a mask (within ``pseudo_eval_split``)."""
        ds = self.dataset(self.pseudo_split)
        index = {iid: i for i, iid in enumerate(ds.ids)}
        ids = self.pseudo_ids()
        if self.config.pseudo_eval_split:
            from .data.voc import read_id_list, split_list_path

            keep = set(read_id_list(split_list_path(self.data_root, self.config.pseudo_eval_split)))
            ids = [i for i in ids if i in keep]
        return [i for i in ids if ds.mask_path(index[i]) is not None]

    def val_ids(self) -> list[str]:
        ids = list(self.dataset(self.val_split).ids)
        return ids[: self.config.val_limit] if self.config.val_limit else ids

    def mask(self, iid: str) -> np.ndarray:
        from .data.voc import load_mask

        ds = self.dataset(self.pseudo_split)
        if "index" not in self._cache:
            self._cache["index"] = {i: k for k, i in enumerate(ds.ids)}
        return load_mask(ds.mask_path(self._cache["index"][iid]))

    def image(self, iid: str) -> np.ndarray:
        from .data.voc import load_rgb

        # a writable copy: pydensecrf refuses read-only buffers (np.asarray of a PIL image is one)
        return np.array(load_rgb(self.data_root / "JPEGImages" / f"{iid}.jpg"), dtype=np.uint8)

    @property
    def num_fg(self) -> int:
        return int(self.dataset(self.pseudo_split).num_classes)

    @property
    def class_names(self) -> list[str]:
        return ["background"] + list(self.dataset(self.pseudo_split).class_names)

    # -- config.json ---------------------------------------------------------------------
    def begin(self, stage: str, spec: dict) -> str:
        """Record (or check) the stage's configuration; returns its key (a hash)."""
        spec = _norm(spec)
        key = config_hash(spec)
        d = self.stage_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "config.json"
        old = _read_json(path)
        if old is not None and old.get("key") != key:
            changed = sorted(k for k in set(spec) | set(old.get("spec", {})) if spec.get(k) != old.get("spec", {}).get(k))
            raise ValueError(
                f"{d} was made with other settings (changed: {changed}); use a new output folder, "
                f"or delete {d} and the stages after it to recompute"
            )
        if old is None:
            _write_json(path, {"stage": stage, "key": key, "spec": spec})
        return key

    def finished(self, stage: str, key: str) -> dict | None:
        """The stage's DONE record when it is complete with the settings ``key``."""
        d = self.done(stage)
        return d if d is not None and d.get("key") == key else None

    def finish(self, stage: str, key: str, result: dict, wall_s: float) -> dict:
        rec = {"stage": stage, "key": key, "result": _norm(result), "wall_s": round(wall_s, 3),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(self.done_path(stage), rec)
        return rec

    # -- sharding ------------------------------------------------------------------------
    def my_part(self, ids: Sequence[str]) -> list[str]:
        i, n = self.shard
        return list(ids)[i::n]

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Return when ``ready()``; else raise :class:`StageIncomplete` or poll (``wait``)."""
        if ready():
            return
        if not self.wait:
            raise StageIncomplete(f"{what}: waiting for the other shards; run again when they have finished")
        print(f"[pipeline] shard {self.shard[0]}/{self.shard[1]}: waiting for {what}", file=sys.stderr)
        while not ready():
            time.sleep(self.poll_s)


def _bar(it, total: int, desc: str, enable: bool):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, disable=not enable, dynamic_ncols=True)


def _trimmed_profile(p: Profile) -> dict:
    return {k: v for k, v in p.to_dict().items() if k not in ("device", "threads", "num_workers")}


def _file_id(path: Path) -> dict:
    st = Path(path).stat()
    return {"file": str(Path(path).resolve()), "size": st.st_size}


# =============================================================================================
# 1. classifier
# =============================================================================================
def _classifier_weights(run_dir: Path) -> Path:
    for name in ("classifier.pt", "final.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"no classifier weights (classifier.pt / last.pt) in {run_dir}")


def stage_classifier(ctx: PipelineContext) -> dict:
    """Stage 1: the trained classifier (REFERENCE.md §4). Records which weights the later
    stages use in ``DIR/classifier/DONE.json`` (the weights themselves stay where they are)."""
    cfg, prof = ctx.config, ctx.profile
    mode = cfg.classifier
    inference = ("scales", "flip", "square", "bg_threshold", "crf_thresholds")  # not the classifier's business
    spec = {"mode": mode if mode in ("workflow", "train") else "file",
            "profile": {k: v for k, v in _trimmed_profile(prof).items() if k not in inference},
            "steps": cfg.classifier_steps}
    if mode not in ("workflow", "train"):
        path = Path(mode).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"classifier checkpoint {path} does not exist (classifier= 'workflow', "
                                    "'train' or a weights file)")
        spec["checkpoint"] = _file_id(path)
    key = ctx.begin("classifier", spec)
    if ctx.finished("classifier", key):
        return ctx.finished("classifier", key)
    if ctx.shard[0] != 0:  # training is shard 0's job
        ctx.wait_until(lambda: ctx.done("classifier") is not None, "the classifier (shard 0)")
        return ctx.require("classifier")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and mode in ("workflow", "train"):
        raise RuntimeError(
            "the pipeline does not train the classifier under torchrun (its training would wait for the other "
            "processes): train it first (torchrun ... -m transcam_nb train --out RUN, or this pipeline without "
            "torchrun), then pass --classifier RUN/classifier.pt")
    t0 = time.time()
    if mode == "workflow":
        from . import workflow

        over = {"max_steps": cfg.classifier_steps} if cfg.classifier_steps else {}
        _, run_dir = workflow.classifier(prof, progress=ctx.progress, **over)
        weights = _classifier_weights(Path(run_dir))
    elif mode == "train":
        from .train import train_classifier

        run_dir = ctx.stage_dir("classifier") / "run"
        train_classifier(prof, run_dir, resume=True, max_steps=cfg.classifier_steps, progress=ctx.progress,
                         from_scratch=cfg.from_scratch)
        weights = _classifier_weights(run_dir)
    else:
        weights = Path(mode).expanduser()
    return ctx.finish("classifier", key, {"checkpoint": str(Path(weights).resolve()), "mode": spec["mode"]},
                      time.time() - t0)


def load_classifier(ctx: PipelineContext):
    """The stage-1 network in eval mode on the pipeline's device."""
    from .models import load_checkpoint
    from .models.factory import build_model_for_profile

    done = ctx.require("classifier")
    model = build_model_for_profile(ctx.profile.replace(drop_path_rate=0.0), init=None, num_classes=ctx.num_fg,
                                    verbose=False)
    load_checkpoint(model, done["result"]["checkpoint"], drop_mismatched_heads=False)
    return model.to(ctx.device).eval()


# =============================================================================================
# 2. CAMs
# =============================================================================================
def _sweep_taus(fixed: float) -> tuple:
    from .metrics import DEFAULT_THRESHOLDS

    return tuple(sorted(set(round(t, 10) for t in DEFAULT_THRESHOLDS) | {round(float(fixed), 10)}))


def stage_cams(ctx: PipelineContext) -> dict:
    """Stage 2: multi-scale CAM and TransCAM maps of every pseudo-label image (REFERENCE.md §3),
    then their pseudo-label mIoU at the fixed τ and over the authors' sweep (REFERENCE.md §5)."""
    import torch

    from .cam import multiscale_cam
    from .metrics import ThresholdSweep
    from .pseudo import load_cams, save_cams
    from .refine import resolve_blocks
    from .workflow import multiscale_variants

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
        for iid in _bar(todo, len(todo), f"cams {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
            item = ds[index[iid]]
            if item.label is None:
                raise ValueError(f"image {iid!r} of {ctx.pseudo_split!r} has no image label (mask, label file or "
                                 "XML): pseudo labels need the image-level labels")
            if one_pass:
                res = multiscale_variants(model, item.image, item.label, variants=variants, scales=prof.scales,
                                          flip=prof.flip, square=prof.square)
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
    taus = _sweep_taus(fixed)
    eval_ids = ctx.eval_ids()
    sweeps = {name: ThresholdSweep(taus, num_classes=ctx.num_fg + 1) for name in dirs}
    for iid in _bar(eval_ids, len(eval_ids), "evaluate CAMs", ctx.progress):
        gt = ctx.mask(iid)
        for name, p in dirs.items():
            cams, classes = load_cams(p / f"{iid}.npz")
            sweeps[name].update(cams, classes, gt)
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "fixed_tau": fixed, "class_names": ctx.class_names}
    for name, sw in sweeps.items():
        r = sw.result()
        cm = r.at(fixed)
        result[name] = {"miou": _pct(cm.miou()), "iou": [_pct(v) for v in cm.iou()], "best_tau": r.best_tau,
                        "best_miou": _pct(r.best_miou), "curve": {f"{t:.2f}": _pct(v) for t, v in zip(r.thresholds, r.miou)}}
    return ctx.finish("cams", key, result, time.time() - t0)


# =============================================================================================
# 3. la / ha CRF labels
# =============================================================================================
def _png_confusion(ctx: PipelineContext, folder: Path, ids: Sequence[str], desc: str):
    from .metrics import ConfusionMatrix
    from .pseudo import load_label_png

    cm = ConfusionMatrix(ctx.num_fg + 1, class_names=ctx.class_names)
    for iid in _bar(ids, len(ids), desc, ctx.progress):
        cm.update(load_label_png(folder / f"{iid}.png"), ctx.mask(iid))
    return cm


def _cm_result(cm) -> dict:
    return {"miou": _pct(cm.miou()), "iou": [_pct(v) for v in cm.iou()]}


def stage_crf(ctx: PipelineContext) -> dict:
    """Stage 3: the PSA training labels la (τ = 0.60) and ha (τ = 0.25) from the TransCAM maps,
    argmax + dense CRF (``crf_inference_label``; REFERENCE.md §3, §7.3)."""
    from .postprocess.crf import make_la_ha_labels
    from .pseudo import load_cams, save_label_png

    prof = ctx.profile
    cams_done = ctx.require("cams")
    thr = tuple(float(t) for t in prof.crf_thresholds)
    if len(thr) != 2:
        raise ValueError(f"profile.crf_thresholds must be (la, ha), two thresholds, got {prof.crf_thresholds}")
    ids = ctx.pseudo_ids()
    key = ctx.begin("crf", {"cams": cams_done["key"], "thresholds": list(thr), "preset": "label",
                            "n_labels": ctx.num_fg + 1})
    if ctx.finished("crf", key):
        return ctx.finished("crf", key)
    d = ctx.stage_dir("crf")
    la_dir, ha_dir = d / "la", d / "ha"
    la_dir.mkdir(parents=True, exist_ok=True)
    ha_dir.mkdir(parents=True, exist_ok=True)

    def has(iid):
        return (la_dir / f"{iid}.png").is_file() and (ha_dir / f"{iid}.png").is_file()

    t0 = time.time()
    todo = [i for i in ctx.my_part(ids) if not has(i)]
    src = ctx.stage_dir("cams") / "transcam"
    for iid in _bar(todo, len(todo), f"crf {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
        cams, classes = load_cams(src / f"{iid}.npz")
        la, ha = make_la_ha_labels(ctx.image(iid), cams, classes, thresholds=thr, num_classes=ctx.num_fg)
        save_label_png(la_dir / f"{iid}.png", la)
        save_label_png(ha_dir / f"{iid}.png", ha)
    ctx.wait_until(lambda: all(has(i) for i in ids), "the CRF labels of the other shards")
    if ctx.done("crf") is not None:
        return ctx.done("crf")
    eval_ids = ctx.eval_ids()
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "thresholds": list(thr)}
    for name, folder in (("la", la_dir), ("ha", ha_dir)):
        result[name] = _cm_result(_png_confusion(ctx, folder, eval_ids, f"evaluate {name}"))
    # how much of the affinity labels is ignored (la says bg, ha says fg)
    from .postprocess.affinity import affinity_labels
    from .pseudo import load_label_png

    ign = tot = 0
    for iid in ids:
        a = affinity_labels(load_label_png(la_dir / f"{iid}.png"), load_label_png(ha_dir / f"{iid}.png"))
        ign += int((a == 255).sum())
        tot += a.size
    result["affinity_ignored_pct"] = _pct(ign / max(tot, 1))
    return ctx.finish("crf", key, result, time.time() - t0)


# =============================================================================================
# 4. AffinityNet
# =============================================================================================
def affinity_config(ctx: PipelineContext):
    from .postprocess.affinity_train import get_affinity_preset

    over = dict(ctx.config.affinity_overrides)
    over.setdefault("seed", int(ctx.profile.seed))
    return get_affinity_preset(ctx.config.affinity, **over)


def build_affinity_net(ctx: PipelineContext, load_pretrained: bool = True):
    from .postprocess.affinity import AffinityNet

    acfg = affinity_config(ctx)
    return AffinityNet(backbone=acfg.backbone,
                       pretrained_path=ctx.config.affinity_weights if load_pretrained else None)


def stage_affinity(ctx: PipelineContext) -> dict:
    """Stage 4: train AffinityNet on the la/ha pairs (``train_aff.py``, REFERENCE.md §7.1);
    resumes from ``affinity_last.pt``."""
    from .postprocess.affinity_train import AffinityDataset, train_affinity

    crf_done = ctx.require("crf")
    acfg = affinity_config(ctx)
    free = ("device", "num_workers", "save_every", "bg", "beta", "logt")  # the last three: random walk
    spec = {"crf": crf_done["key"], "config": {k: v for k, v in acfg.to_dict().items() if k not in free},
            "weights": _file_id(Path(ctx.config.affinity_weights)) if ctx.config.affinity_weights else None}
    key = ctx.begin("affinity", spec)
    if ctx.finished("affinity", key):
        return ctx.finished("affinity", key)
    if ctx.shard[0] != 0:
        ctx.wait_until(lambda: ctx.done("affinity") is not None, "AffinityNet (trained by shard 0)")
        return ctx.require("affinity")
    d = ctx.stage_dir("affinity")
    t0 = time.time()
    ids = ctx.pseudo_ids()
    crf_dir = ctx.stage_dir("crf")
    ds = AffinityDataset.from_folders(ctx.data_root / "JPEGImages", crf_dir / "la", crf_dir / "ha", ids=ids,
                                      crop_size=acfg.crop_size, color_jitter=acfg.color_jitter, flip=acfg.flip,
                                      seed=acfg.seed)
    resuming = (d / "affinity_last.pt").is_file()
    model = build_affinity_net(ctx, load_pretrained=not resuming)
    out = train_affinity(model, ds, acfg, out_dir=d, device=ctx.device, resume=True, progress=ctx.progress,
                         from_scratch=ctx.config.from_scratch)
    if out["final"] is None:
        raise RuntimeError(f"AffinityNet training stopped at step {out['step']} of {out['max_step']}")
    hist = out["history"]
    _write_json(d / "history.json", hist)
    result = {"steps": out["step"], "backbone": acfg.backbone, "final_loss": hist[-1]["loss"] if hist else None,
              "weights": str(out["final"])}
    return ctx.finish("affinity", key, result, time.time() - t0)


# =============================================================================================
# 5. random walk
# =============================================================================================
def stage_randomwalk(ctx: PipelineContext) -> dict:
    """Stage 5: random walk of the TransCAM maps over the learnt affinities (``infer_aff.py``,
    REFERENCE.md §7.2), without (``rw/``) and with (``rw_crf/``) the final dense CRF."""
    import torch

    from .postprocess.affinity import load_affinity_checkpoint
    from .postprocess.random_walk import prepare_image, random_walk
    from .pseudo import load_cams, save_label_png

    aff_done = ctx.require("affinity")
    cams_done = ctx.require("cams")
    acfg = affinity_config(ctx)
    ids = ctx.pseudo_ids()
    spec = {"affinity": aff_done["key"], "cams": cams_done["key"], "bg": acfg.bg, "beta": acfg.beta,
            "logt": acfg.logt, "radius": acfg.radius, "crf_preset": "label"}
    key = ctx.begin("randomwalk", spec)
    if ctx.finished("randomwalk", key):
        return ctx.finished("randomwalk", key)
    d = ctx.stage_dir("randomwalk")
    rw_dir, rwc_dir = d / "rw", d / "rw_crf"
    rw_dir.mkdir(parents=True, exist_ok=True)
    rwc_dir.mkdir(parents=True, exist_ok=True)

    def has(iid):
        return (rw_dir / f"{iid}.png").is_file() and (rwc_dir / f"{iid}.png").is_file()

    t0 = time.time()
    todo = [i for i in ctx.my_part(ids) if not has(i)]
    if todo:
        model = build_affinity_net(ctx, load_pretrained=False)
        load_affinity_checkpoint(model, ctx.stage_dir("affinity") / "affinity_net.pt")
        model.to(ctx.device).eval()
        src = ctx.stage_dir("cams") / "transcam"
        kw = dict(num_classes=ctx.num_fg, bg=acfg.bg, beta=acfg.beta, logt=acfg.logt, radius=acfg.radius,
                  stride=model.stride)
        for iid in _bar(todo, len(todo), f"random walk {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
            cams, classes = load_cams(src / f"{iid}.npz")
            image = ctx.image(iid)
            with torch.no_grad():
                aff = model.dense_affinity(prepare_image(image, model.stride, ctx.device), acfg.radius)
            save_label_png(rw_dir / f"{iid}.png", random_walk(cams, classes, aff, **kw))
            save_label_png(rwc_dir / f"{iid}.png", random_walk(cams, classes, aff, image, crf=True, **kw))
    ctx.wait_until(lambda: all(has(i) for i in ids), "the random walks of the other shards")
    if ctx.done("randomwalk") is not None:
        return ctx.done("randomwalk")
    eval_ids = ctx.eval_ids()
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "bg": acfg.bg, "beta": acfg.beta, "logt": acfg.logt,
              "random_walk": _cm_result(_png_confusion(ctx, rw_dir, eval_ids, "evaluate rw")),
              "random_walk_crf": _cm_result(_png_confusion(ctx, rwc_dir, eval_ids, "evaluate rw+crf"))}
    return ctx.finish("randomwalk", key, result, time.time() - t0)


# =============================================================================================
# 6. DeepLab
# =============================================================================================
def seg_config(ctx: PipelineContext):
    from .segmentation import get_seg_config

    over = dict(ctx.config.seg_overrides)
    over.setdefault("num_classes", ctx.num_fg + 1)
    return get_seg_config(ctx.config.segmentation, **over)


def stage_segment(ctx: PipelineContext) -> dict:
    """Stage 6: DeepLab trained on the random-walk labels (``train_deeplab.py``, REFERENCE.md §8;
    resumes from ``last.pt``), then scored on the validation split with multi-scale + flip
    inference (and the CRF when the preset says so)."""
    from .segmentation import evaluate_segmentation, load_segmentation_model, train_segmentation
    from .segmentation.train import _RESUME_FREE

    rw_done = ctx.require("randomwalk")
    scfg = seg_config(ctx)
    if ctx.config.seg_labels not in ("rw", "rw_crf"):
        raise ValueError(f"seg_labels must be 'rw' or 'rw_crf', got {ctx.config.seg_labels!r}")
    val_ids = ctx.val_ids()
    spec = {"randomwalk": rw_done["key"], "labels": ctx.config.seg_labels, "val_split": ctx.val_split,
            "val_ids": config_hash(val_ids), "n_val": len(val_ids),
            "config": {k: v for k, v in scfg.to_dict().items() if k not in _RESUME_FREE - {"test_scales", "test_flip",
                                                                                          "test_crf"}},
            "pretrained": _file_id(Path(scfg.pretrained_path)) if scfg.pretrained_path else None}
    key = ctx.begin("segment", spec)
    if ctx.finished("segment", key):
        return ctx.finished("segment", key)
    if ctx.shard[0] != 0:
        ctx.wait_until(lambda: ctx.done("segment") is not None, "DeepLab (trained by shard 0)")
        return ctx.require("segment")
    d = ctx.stage_dir("segment")
    t0 = time.time()
    labels = ctx.stage_dir("randomwalk") / ctx.config.seg_labels
    res = train_segmentation(scfg, ctx.data_root, labels, ctx.pseudo_ids(), d, device=ctx.device, resume=True,
                             progress=ctx.progress, from_scratch=ctx.config.from_scratch)
    if res.iteration < scfg.iters:
        raise RuntimeError(f"DeepLab training stopped at iteration {res.iteration} of {scfg.iters}")
    model = load_segmentation_model(res.model_path, device=ctx.device)
    cm = evaluate_segmentation(model, ctx.data_root, val_ids, scales=scfg.test_scales, flip=scfg.test_flip,
                               crf=scfg.test_crf or None, num_classes=ctx.num_fg + 1, save_dir=d / "val_pred",
                               progress=ctx.progress)
    result = {"iterations": res.iteration, "last_loss": res.last_loss, "val_split": ctx.val_split,
              "num_val": len(val_ids), "test_scales": list(scfg.test_scales), "test_flip": scfg.test_flip,
              "test_crf": scfg.test_crf, "labels": ctx.config.seg_labels, "num_train": len(ctx.pseudo_ids()),
              "deeplab_val": _cm_result(cm)}
    return ctx.finish("segment", key, result, time.time() - t0)


# =============================================================================================
# driver
# =============================================================================================
STAGE_FUNCTIONS: dict[str, Callable[[PipelineContext], dict]] = {
    "classifier": stage_classifier,
    "cams": stage_cams,
    "crf": stage_crf,
    "affinity": stage_affinity,
    "randomwalk": stage_randomwalk,
    "segment": stage_segment,
}


def run_stage(ctx: PipelineContext, stage: str) -> tuple[str, dict]:
    """Run one stage; a stage already complete with the same settings is skipped (one made with
    other settings raises ``ValueError``). Returns ``(status, DONE record)``, status ``"ran"`` or
    ``"skipped"``."""
    if stage not in STAGE_FUNCTIONS:
        raise ValueError(f"unknown pipeline stage {stage!r}; stages: {', '.join(STAGES)}")
    from .device import seed_everything

    before = ctx.done(stage)
    # every stage starts from the same RNG state, whatever ran before it in this process (a
    # resumed run skips stages), so e.g. AffinityNet's initial weights do not depend on it
    seed_everything(int(ctx.profile.seed))
    rec = STAGE_FUNCTIONS[stage](ctx)
    if before is not None and before.get("key") == rec.get("key") and before.get("finished") == rec.get("finished"):
        print(f"[pipeline] {stage}: done already ({ctx.done_path(stage)}), skipped", file=sys.stderr)
        return "skipped", rec
    print(f"[pipeline] {stage}: finished in {rec.get('wall_s', 0):.1f} s", file=sys.stderr)
    return "ran", rec


def _summary(ctx: PipelineContext, statuses: dict) -> dict:
    summary: dict = {}
    details: dict = {"profile": ctx.profile.name, "out_dir": str(ctx.out_dir), "config": ctx.config.to_dict(),
                     "class_names": None, "wall_s": {}, "status": statuses}
    cams = ctx.done("cams")
    if cams:
        r = cams["result"]
        summary["cam"] = r["cam"]["miou"]
        summary["transcam"] = r["transcam"]["miou"]
        details["class_names"] = r["class_names"]
        details["pseudo_labels"] = {"split": ctx.pseudo_split, "num_images": r["num_images"], "num_eval": r["num_eval"],
                                    "fixed_tau": r["fixed_tau"]}
        for name in ("cam", "transcam"):
            details[name] = {"best_tau": r[name]["best_tau"], "best_miou": r[name]["best_miou"],
                             "iou": r[name]["iou"]}
    crf = ctx.done("crf")
    if crf:
        details["crf"] = {k: crf["result"][k] for k in ("la", "ha", "thresholds", "affinity_ignored_pct")}
    rw = ctx.done("randomwalk")
    if rw:
        summary["random_walk"] = rw["result"]["random_walk"]["miou"]
        summary["random_walk_crf"] = rw["result"]["random_walk_crf"]["miou"]
        details["random_walk"] = {k: rw["result"][k] for k in ("bg", "beta", "logt")}
        details["random_walk"]["iou"] = rw["result"]["random_walk"]["iou"]
        details["random_walk_crf"] = {"iou": rw["result"]["random_walk_crf"]["iou"]}
    aff = ctx.done("affinity")
    if aff:
        details["affinity"] = aff["result"]
    seg = ctx.done("segment")
    if seg:
        r = seg["result"]
        summary["deeplab_val"] = r["deeplab_val"]["miou"]
        details["deeplab_val"] = {k: r[k] for k in ("val_split", "num_val", "num_train", "iterations", "test_scales",
                                                    "test_flip", "test_crf", "labels")}
        details["deeplab_val"]["iou"] = r["deeplab_val"]["iou"]
    for st in STAGES:
        rec = ctx.done(st)
        if rec:
            details["wall_s"][st] = rec.get("wall_s")
    details["wall_s"]["total_after_classifier"] = round(sum(v for k, v in details["wall_s"].items()
                                                            if k != "classifier" and v), 3)
    summary["details"] = details
    return summary


def default_out_dir(profile: Profile, config: PipelineConfig | None = None) -> Path:
    """``<artifacts>/pipeline-<profile>-<hash of profile and settings>`` (the book's cache)."""
    from .workflow import artifacts_dir

    config = config or pipeline_config(profile)
    h = config_hash({"profile": _trimmed_profile(profile), "config": config.to_dict()}, 10)
    return artifacts_dir() / f"pipeline-{profile.name}-{h}"


def run_pipeline(profile: Profile | str | None = None, out_dir: str | os.PathLike | None = None,
                 stages: Sequence[str] | None = None, *, config: PipelineConfig | None = None,
                 shard: tuple[int, int] = (0, 1), wait: bool = False, progress: bool = True,
                 **config_overrides) -> dict:
    """Run the stages in order (all by default), skipping finished ones; returns the summary.

    ``profile``: a :class:`~transcam_nb.profiles.Profile` or name. ``out_dir``: the run folder
    (default :func:`default_out_dir`). ``config`` / ``config_overrides``: the
    :class:`PipelineConfig` (default :func:`pipeline_config` of the profile). ``stages``: a subset
    (its earlier stages must be complete). ``shard``, ``wait``: see the module docstring; a
    shard that must wait with ``wait=False`` stops, and the summary says which stage is
    incomplete. ``DIR/summary.json`` is rewritten after every stage.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = config or pipeline_config(prof)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    out = Path(out_dir) if out_dir is not None else default_out_dir(prof, cfg)
    out.mkdir(parents=True, exist_ok=True)
    i, n = int(shard[0]), int(shard[1])
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    from .device import seed_everything, set_threads

    set_threads(prof.threads)
    seed_everything(prof.seed)
    ctx = PipelineContext(prof, cfg, out, shard=(i, n), wait=wait, progress=progress)
    wanted = list(STAGES) if stages is None else list(stages)
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise ValueError(f"unknown pipeline stage(s) {bad}; stages: {', '.join(STAGES)}")
    statuses: dict = {}
    t0 = time.time()
    for st in STAGES:
        if st not in wanted:
            continue
        try:
            statuses[st], _ = run_stage(ctx, st)
        except StageIncomplete as e:
            statuses[st] = "waiting for other shards"
            print(f"[pipeline] {st}: {e}", file=sys.stderr)
            break
        if i == 0:
            _write_json(out / "summary.json", _summary(ctx, statuses))
    summary = _summary(ctx, statuses)
    summary["details"]["wall_s"]["this_call"] = round(time.time() - t0, 3)
    if i == 0:
        _write_json(out / "summary.json", summary)
    return summary


# =============================================================================================
# reading results (for the book)
# =============================================================================================
def read_summary(out_dir: str | os.PathLike) -> dict:
    p = Path(out_dir) / "summary.json"
    s = _read_json(p)
    if s is None:
        raise FileNotFoundError(f"{p} does not exist or is not JSON: run the pipeline first")
    return s


#: rows of :func:`results_table`: (label, summary key, where it is measured)
TABLE_ROWS = (
    ("CAM", "cam", "pseudo"),
    ("TransCAM", "transcam", "pseudo"),
    ("+ random walk", "random_walk", "pseudo"),
    ("+ random walk + CRF", "random_walk_crf", "pseudo"),
    ("DeepLab", "deeplab_val", "val"),
)


def results_table(out_dir: str | os.PathLike):
    """Per-class IoU (%) of every stage, laid out like the paper's Table 4: one row per stage,
    columns background, the classes and mIoU. The pseudo-label rows are scored on the
    pseudo-label images, the DeepLab row on the validation split (column ``images``)."""
    import pandas as pd

    s = read_summary(out_dir)
    det = s["details"]
    names = det.get("class_names")
    rows, index = [], []
    for label, key, where in TABLE_ROWS:
        if key not in s or key not in det:
            continue
        iou = det[key]["iou"]
        row = dict(zip(names, iou))
        row["mIoU"] = s[key]
        if where == "pseudo":
            pl = det["pseudo_labels"]
            row["images"] = f"{pl['split']} ({pl['num_eval']})"
        else:
            row["images"] = f"{det['deeplab_val']['val_split']} ({det['deeplab_val']['num_val']})"
        rows.append(row)
        index.append(label)
    df = pd.DataFrame(rows, index=pd.Index(index, name="stage"))
    return df[[c for c in names if c in df.columns] + ["mIoU", "images"]] if rows else df


def load_example(out_dir: str | os.PathLike, image_id: str, profile: Profile | str | None = None) -> dict:
    """Everything the pipeline produced for one pseudo-label image, for figures: ``image``,
    ``gt``, ``cam`` / ``transcam`` (``(cams, classes)``), ``argmax_la`` / ``argmax_ha`` (hard
    labels before the CRF), ``la`` / ``ha`` (after it), ``affinity_label`` (PSA's combination),
    ``rw``, ``rw_crf``. Missing outputs are ``None``."""
    from .postprocess.affinity import affinity_labels
    from .postprocess.crf import labels_from_cams
    from .pseudo import load_cams, load_label_png

    out = Path(out_dir)
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    ctx = PipelineContext(prof, pipeline_config(prof), out, progress=False)
    ex: dict = {"id": image_id, "image": ctx.image(image_id)}
    try:
        ex["gt"] = ctx.mask(image_id)
    except (KeyError, TypeError, FileNotFoundError):
        ex["gt"] = None
    for name in ("cam", "transcam"):
        p = out / "cams" / name / f"{image_id}.npz"
        ex[name] = load_cams(p) if p.is_file() else None
    thr = tuple(float(t) for t in prof.crf_thresholds)
    if ex["transcam"] is not None:
        cams, classes = ex["transcam"]
        ex["argmax_la"] = labels_from_cams(cams, classes, thr[0], ctx.num_fg)
        ex["argmax_ha"] = labels_from_cams(cams, classes, thr[1], ctx.num_fg)
    for name, rel in (("la", "crf/la"), ("ha", "crf/ha"), ("rw", "randomwalk/rw"), ("rw_crf", "randomwalk/rw_crf")):
        p = out / rel / f"{image_id}.png"
        ex[name] = load_label_png(p) if p.is_file() else None
    ex["affinity_label"] = affinity_labels(ex["la"], ex["ha"]) if ex["la"] is not None and ex["ha"] is not None else None
    return ex


def read_deeplab_log(out_dir: str | os.PathLike):
    """DeepLab's training log (``segment/log.jsonl``) as a DataFrame (iteration, loss, lr, time_s)."""
    import pandas as pd

    p = Path(out_dir) / "segment" / "log.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: run the segment stage first")
    return pd.DataFrame([json.loads(l) for l in p.read_text().splitlines() if l.strip()])


def read_affinity_history(out_dir: str | os.PathLike):
    """AffinityNet's per-step losses (``affinity/history.json``) as a DataFrame."""
    import pandas as pd

    p = Path(out_dir) / "affinity" / "history.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: run the affinity stage first")
    return pd.DataFrame(json.loads(p.read_text()))


# =============================================================================================
# command line (registered in transcam_nb/cli.py)
# =============================================================================================
def add_arguments(p, stage: str | None = None) -> None:
    """Arguments of ``python -m transcam_nb pipeline`` (and of the per-stage commands)."""
    import argparse

    p.add_argument("--profile", default=None, help="tiny | paper (default: $TRANSCAM_PROFILE or tiny)")
    p.add_argument("--out", required=True, help="run folder: one sub-folder per stage, summary.json")
    if stage is None:
        p.add_argument("--stages", default=None,
                       help=f"comma-separated subset of {','.join(STAGES)} (default: all, in order)")
    p.add_argument("--data-root", default=None, help="VOC-layout folder holding JPEGImages/ (the tiny profile "
                   "generates its benchmark without it)")
    p.add_argument("--classifier", default=None,
                   help="'workflow' (the book's cached classifier, default), 'train' (train into OUT/classifier) "
                        "or a weights file")
    p.add_argument("--classifier-steps", type=int, default=None, help="step budget of the classifier training")
    p.add_argument("--pseudo-limit", type=int, default=None, help="only the first N pseudo-label images")
    p.add_argument("--val-limit", type=int, default=None, help="only the first N validation images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile field, repeatable (e.g. --set bg_threshold=0.3)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline setting (PipelineConfig), JSON values (e.g. --config "
                        "'seg_overrides={\"iters\": 100}')")
    p.add_argument("--shard", default=None, help="i/n for the per-image stages (default: torchrun's "
                   "RANK/WORLD_SIZE, else 0/1)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="a shard that finishes first polls for the others (default: yes under torchrun)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 | auto (default: the profile's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--from-scratch", action="store_true", help="allow the paper profile's classifier, AffinityNet "
                   "and DeepLab to start from random weights (they refuse without their init files)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(pipeline_stage=stage)


def _parse_config_items(items) -> dict:
    from .cli import parse_key_values

    return parse_key_values(items, "--config")


def run_cli(args) -> int:
    """Run ``pipeline`` (or one stage) from parsed arguments; prints the summary's numbers."""
    from .cli import parse_shard
    from .train import parse_set_overrides

    prof = get_profile(args.profile)
    try:
        over = parse_set_overrides(args.set, prof)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.data_root is not None:
        over["data_root"] = str(args.data_root)
    if args.device is not None:
        over["device"] = args.device
    if args.threads is not None:
        over["threads"] = args.threads
    prof = prof.replace(**over) if over else prof
    cover = _parse_config_items(args.config)
    if args.from_scratch:
        cover["from_scratch"] = True
    for flag, name in (("classifier", "classifier"), ("classifier_steps", "classifier_steps"),
                       ("pseudo_limit", "pseudo_limit"), ("val_limit", "val_limit")):
        v = getattr(args, flag)
        if v is not None:
            cover[name] = v
    try:
        cfg = pipeline_config(prof, **cover)
    except TypeError as e:
        raise SystemExit(str(e)) from None
    stage = getattr(args, "pipeline_stage", None)
    stages = [stage] if stage else ([s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None)
    shard = parse_shard(args.shard)
    wait = args.wait if args.wait is not None else ("WORLD_SIZE" in os.environ and args.shard is None)
    try:
        summary = run_pipeline(prof, args.out, stages, config=cfg, shard=shard, wait=wait,
                               progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if isinstance(e, StageIncomplete):
            raise
        raise SystemExit(f"[pipeline] {type(e).__name__}: {e}") from None
    nums = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
    print(json.dumps({"out": str(args.out), "miou_percent": nums, "status": summary["details"]["status"]}, indent=2))
    status = summary["details"]["status"]
    return 0 if all(v in ("ran", "skipped") for v in status.values()) else 2
