"""The pipeline's results: ``DIR/summary.json`` (built by :func:`build_summary`), the Table-4
style :func:`results_table`, and readers for the book (:func:`read_summary`, :func:`load_example`,
:func:`read_deeplab_log`, :func:`read_affinity_history`).

A book chapter that did not run the pipeline itself finds the run of a profile with
:func:`find_run` (``<artifacts>/pipeline-<profile>-<hash>``, the folder
:func:`transcam_nb.pipeline.default_out_dir` names) or directly ``read_summary(profile=...)``.

``summary.json`` holds the mIoU in **percent** after each stage (``cam``, ``transcam``,
``random_walk``, ``random_walk_crf`` on the pseudo-label images with ground truth,
``deeplab_val`` on the validation split) plus ``details`` (τ, image counts, per-class IoUs,
wall times). Every headline number uses settings fixed in advance (τ = the profile's
``bg_threshold``, the random walk's 0.42); the τ picked on the ground truth is reported beside
them in ``details``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..artifacts import artifacts_dir, read_json, read_jsonl
from ..config import PipelineConfig, Profile, get_profile
from .context import STAGES, PipelineContext, default_out_dir, pipeline_config

__all__ = ["build_summary", "find_run", "read_summary", "TABLE_ROWS", "results_table", "load_example",
           "read_deeplab_log", "read_affinity_history"]


def build_summary(ctx: PipelineContext, statuses: dict) -> dict:
    """The content of ``DIR/summary.json`` from the stages' ``DONE.json`` records."""
    summary: dict = {}
    details: dict = {"profile": ctx.profile.name, "out_dir": ctx.out_dir.name, "config": ctx.config.to_dict(),
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




def find_run(profile: Profile | str | None = None, config: PipelineConfig | None = None) -> Path:
    """The run folder of ``profile``'s pipeline under the artifacts folder.

    First :func:`~transcam_nb.pipeline.default_out_dir` of the profile and settings (the folder
    chapter 6 runs into); when that holds no ``summary.json``, the most recent
    ``pipeline-<profile name>-*`` folder that does. Raises ``FileNotFoundError`` (naming the
    profile, not a path) when there is none."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    exact = default_out_dir(prof, config or pipeline_config(prof))
    if (exact / "summary.json").is_file():
        return exact
    runs = sorted(artifacts_dir().glob(f"pipeline-{prof.name}-*/summary.json"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1].parent
    raise FileNotFoundError(f"no pipeline run of the {prof.name!r} profile in the artifacts folder: run chapter 6 "
                            f"or `python -m transcam_nb pipeline --profile {prof.name} --out <artifacts>/{exact.name}`")


def _run_dir(out_dir, profile) -> Path:
    return Path(out_dir) if out_dir is not None else find_run(profile)


def read_summary(out_dir: str | os.PathLike | None = None, *, profile: Profile | str | None = None) -> dict:
    """``summary.json`` of a run folder, or (``out_dir=None``) of ``profile``'s run (:func:`find_run`)."""
    p = _run_dir(out_dir, profile) / "summary.json"
    s = read_json(p)
    if s is None:
        raise FileNotFoundError(f"{p.parent.name}/summary.json does not exist or is not JSON: run the pipeline first")
    return s


#: rows of :func:`results_table`: (label, summary key, where it is measured)
TABLE_ROWS = (
    ("CAM", "cam", "pseudo"),
    ("TransCAM", "transcam", "pseudo"),
    ("+ random walk", "random_walk", "pseudo"),
    ("+ random walk + CRF", "random_walk_crf", "pseudo"),
    ("DeepLab", "deeplab_val", "val"),
)


def results_table(out_dir: str | os.PathLike | None = None, *, profile: Profile | str | None = None):
    """Per-class IoU (%) of every stage, laid out like the paper's Table 4: one row per stage,
    columns background, the classes and mIoU. The pseudo-label rows are scored on the
    pseudo-label images, the DeepLab row on the validation split (column ``images``).
    ``out_dir=None``: the run of ``profile`` (:func:`find_run`)."""
    import pandas as pd

    s = read_summary(out_dir, profile=profile)
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
    from ..postprocess.affinity import affinity_labels
    from ..postprocess.crf import labels_from_cams
    from ..pseudo import load_cams, load_label_png

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
        raise FileNotFoundError(f"{p.parent.parent.name}/segment/log.jsonl does not exist: run the segment stage first")
    return pd.DataFrame(read_jsonl(p))


def read_affinity_history(out_dir: str | os.PathLike):
    """AffinityNet's per-step losses (``affinity/history.json``) as a DataFrame."""
    import pandas as pd

    p = Path(out_dir) / "affinity" / "history.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p.parent.parent.name}/affinity/history.json does not exist: run the affinity stage "
                                "first")
    return pd.DataFrame(read_json(p))



