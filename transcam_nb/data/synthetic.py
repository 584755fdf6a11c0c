"""The embedded benchmark: a synthetic weakly-supervised segmentation dataset in VOC layout.

No dataset can be downloaded where the book is built, so the tiny profile trains and
evaluates on images this module draws itself, deterministically from a seed, and writes in
the VOC devkit layout so that every later stage reads them through
:class:`~transcam_nb.data.voc.VOCDataset` exactly as it reads PASCAL VOC.

What problem it poses
---------------------
TransCAM (Li et al.) targets *partial activation*: a classification network's CAM fires on
the most discriminative part of an object (a cat's face) and misses the rest, which is
ambiguous for classification. Attention, acting as feature affinity, spreads the CAM to the
rest of the object (paper Fig. 1, Eq. 5). An earlier CPU experiment
(``docs/tiny-findings.md`` part 1) found that with a coarse token grid and a single-token part a
from-scratch CAM *over*-spreads instead, so this generator is built to make plain CAM
under-cover objects:

* **Class = a small discriminative part.** Each of the K classes (default 8, up to 10) owns a
  geometric emblem (3×3 checker, bullseye, plus, saltire, horizontal stripes, vertical
  stripes, triangle, 2×2 dots, diamond, frame). The emblem is a square tile of 14–24 px at
  160 px (scaled with ``image_size``; it grows with its object, like a head with its body),
  so it spans 1–1.5 tokens a side and overlaps 2×2 tokens of a patch-16 grid: a multi-token
  part, not a single token. It sits towards one end of the body's major axis, 0.45–0.75 of
  the way to the rim (a head at one end of a body), so most of the object lies 2–6 tokens
  away from it. Tiles rotate by at most ±12°, and every emblem is symmetric under a
  horizontal flip, so flip augmentation does not change the class. The class is carried by the
  *pattern* and by the emblem's *hue* (each class owns one saturated hue, evenly spaced on the
  colour circle; the figure is drawn in it on a dark shade of the body colour). The hue was added
  in generator version 3: with patterns alone a tiny Conformer did not learn the classes within
  the book's CPU budget. The tiny profile therefore switches off hue jitter.
* **The rest of the object is shared and ambiguous.** Bodies (elongated irregular blobs: an
  ellipse of aspect 0.4–0.75 with a random low-order Fourier wobble of the rim) take their size,
  shape, colour and texture from one distribution for all classes. Half of the images also
  hold a *decoy* body: a blob drawn exactly like an object body but without an emblem, which
  is background in the masks. So the body carries no class evidence, and not even
  "objectness": only the emblem is evidence, which pushes a GAP-trained CAM towards the part.
* **Objects are coherent.** One object's body has one colour and one texture (stripes,
  checks or blotches of one period and orientation, low contrast), and its emblem is drawn
  on a dark shade of that same body colour. Body colours are kept away from the
  colours of the background regions and of the other objects of the image. Low-level
  affinity can therefore, in principle, spread a part's activation over its whole object,
  and stop at the object's boundary.
* **Realistic nuisance.** The background is split into 3–6 Voronoi "stuff" regions with
  wavy borders, each with its own colour and texture; 6–12 small clutter shapes, 0–3 thin
  lines and 0–2 solid high-contrast blobs (structure-free, so not emblems) sit on it; global
  shading and pixel noise are applied; images are saved as JPEG (quality 92).
* **Objects.** 1–3 per image (probabilities 0.45 / 0.35 / 0.2), of different classes; major
  semi-axis 0.21–0.46 of the image side depending on the count (scale variation); overlap is
  allowed, but an earlier object keeps at least 45 % of its area and 90 % of its emblem
  visible, and at least 60 % of each object lies inside the image. Measured on the default
  training split (:func:`summarize`): 1.7 objects per image, an object covers 16 % of the
  image on average (about 4,200 px at 160 px), its emblem 8 % of the object (4–27 %), 22 %
  of objects are partly occluded, half of the images hold a decoy.
* **Premise check.** A plain 5-layer CNN (output stride 16, 3×3 CAM head, GAP,
  multilabel soft-margin loss) trained from scratch for 1,000 steps of 32 images on the
  default set fires on every emblem but covers only 58 % of its object at a CAM threshold of
  0.3 (43 % at 0.5; precision 0.66 / 0.80), and its best pseudo-label threshold is low (0.2):
  the under-coverage regime of the paper's Fig. 1. (An earlier version with round bodies and
  central emblems gave 79 % coverage: a part-centred blob already covered small objects.)
* **Ground truth.** ``SegmentationClass/<id>.png`` (palette PNG, 0 background, 1..K
  classes; the emblem belongs to its object; nothing is ignored),
  ``SegmentationObject/<id>.png`` (instance index 1..n in drawing order),
  ``instances.json`` (per image and object: class, emblem box, visible area, emblem area, ...)
  so that the coverage of each object (and of its emblem) by a CAM can be measured,
  ``cls_labels.json`` (id → 0-based class indices), ``classes.txt`` (the K class names,
  read by VOCDataset), ``ImageSets/Segmentation/{train,val,test,train_aug}.txt``
  (``train_aug`` = ``train``, so paper-profile code runs unchanged).

Defaults and why
----------------
``image_size=160``: a 10×10 token grid at patch 16 (the experiment's 8×8 grid at 128 px made
a one-token part body-sized after upsampling); 192 px costs about 2× per training step on
this CPU against 128 px, 160 px about 1.5×. ``n_train=2000, n_val=200, n_test=200``: a
from-scratch tiny Conformer converged in about 11 k images seen (docs/tiny-findings.md
part 1), i.e. a few epochs over 2000 images, and 200 images give a stable dataset-level
mIoU. Generation takes seconds on two cores and is cached on disk (:func:`ensure`).

Determinism: image ``i`` of split ``s`` is drawn from its own generator
``numpy.random.default_rng([seed, split_code(s), i])``, so it does not depend on the other
images, on the split sizes or on the number of worker processes. ``GENERATOR_VERSION``
changes whenever the drawing changes; it is part of :func:`spec` and of the cache folder name.

Layout: the drawing (:func:`render`, :func:`part_pattern`, the primitives) lives in
:mod:`transcam_nb.data.synthetic_draw`; this module re-exports it and holds the spec, the
cache, the writing of the devkit (:func:`generate`, :func:`ensure`) and the readers of a
written set (:func:`load_instances`, :func:`instance_masks`, :func:`object_coverage`,
:func:`summarize`, :func:`check_consistency`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .synthetic_draw import GENERATOR_VERSION, PART_PATTERNS, SPLITS, part_pattern, render
from .voc import IGNORE_INDEX, VOC_PALETTE, image_labels, load_mask, write_id_list

__all__ = [
    "GENERATOR_VERSION",
    "PART_PATTERNS",
    "SPLITS",
    "DEFAULTS",
    "spec",
    "spec_hash",
    "default_root",
    "generate",
    "ensure",
    "render",
    "part_pattern",
    "load_instances",
    "instance_masks",
    "object_coverage",
    "summarize",
    "check_consistency",
]

DEFAULTS = dict(image_size=160, n_train=2000, n_val=200, n_test=200, num_classes=8)

_MARKER = ".complete"
_JPEG_QUALITY = 92


# --------------------------------------------------------------------------------------
# spec, cache folder
# --------------------------------------------------------------------------------------
def spec(seed: int = 0, **sizes) -> dict:
    """The full, validated parameter set of a benchmark (hashed into the cache folder name):
    ``generator_version``, ``seed``, ``image_size``, ``n_train``, ``n_val``, ``n_test``,
    ``num_classes``."""
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown benchmark parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    d = dict(DEFAULTS)
    d.update(sizes)
    d = {k: int(v) for k, v in d.items()}
    if d["image_size"] < 64:
        raise ValueError(f"image_size must be at least 64 px, got {d['image_size']}")
    for k in ("n_train", "n_val", "n_test"):
        if d[k] < 0:
            raise ValueError(f"{k} must be >= 0, got {d[k]}")
    if not 3 <= d["num_classes"] <= len(PART_PATTERNS):
        raise ValueError(f"num_classes must be in 3..{len(PART_PATTERNS)}, got {d['num_classes']}")
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), **d}


def spec_hash(s: dict) -> str:
    """Short stable hash of a :func:`spec` dict."""
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]


def default_root() -> Path:
    """Cache folder for generated data: ``$TRANSCAM_DATA_DIR`` or ``~/.cache/transcam_nb``."""
    env = os.environ.get("TRANSCAM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transcam_nb"


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _marker_matches(folder: Path, s: dict) -> bool:
    """Whether ``folder`` holds a complete benchmark generated with the spec ``s``."""
    m = _read_marker(folder)
    return m is not None and {k: m.get(k) for k in s} == s



# --------------------------------------------------------------------------------------
# writing a devkit
# --------------------------------------------------------------------------------------
def _image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _work(args):
    out, seed, split, index, S, K = args
    img, sem, inst, info = render(seed, split, index, S, K)
    iid = _image_id(split, index)
    Image.fromarray(img).save(out / "JPEGImages" / f"{iid}.jpg", quality=_JPEG_QUALITY)
    for folder, arr in (("SegmentationClass", sem), ("SegmentationObject", inst)):
        im = Image.fromarray(arr)
        im.putpalette(VOC_PALETTE)
        im.save(out / folder / f"{iid}.png")
    return iid, info


def _readme(s: dict, seconds: float) -> str:
    names = ", ".join(PART_PATTERNS[: s["num_classes"]])
    return (
        "# TransCAM embedded benchmark (synthetic, VOC devkit layout)\n\n"
        f"Generated by `transcam_nb.data.synthetic` (generator version {s['generator_version']}) "
        f"in {seconds:.1f} s with parameters:\n\n```json\n{json.dumps(s, indent=2)}\n```\n\n"
        f"Classes (emblem patterns, mask values 1..{s['num_classes']}): {names}.\n\n"
        "Each object is a textured blob shared by all classes whose class is given only by a small "
        "emblem drawn in shades of the body colour; decoy blobs without emblems are background. "
        "See the module docstring for the full design.\n\n"
        "Files: JPEGImages/, SegmentationClass/ (palette PNG, 0 bg, 1..K), SegmentationObject/ "
        "(instance ids), ImageSets/Segmentation/{train,val,test,train_aug}.txt, classes.txt, "
        "cls_labels.json (id -> 0-based class indices), instances.json (per-object info), spec.json.\n"
    )


def generate(
    root,
    *,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    _keep_complete: bool = False,
    **sizes,
) -> Path:
    """Generate the benchmark into ``root`` (a complete VOC devkit) and return ``root``.

    ``sizes``: ``image_size`` (160), ``n_train`` (2000), ``n_val`` (200), ``n_test`` (200),
    ``num_classes`` (8). ``workers``: processes (default: the CPU count, at most 8; 0 = in
    this process). The set is drawn into a temporary sibling folder and renamed into place at
    the end, so ``root`` is either absent or complete. An existing non-empty ``root`` raises
    ``FileExistsError`` unless ``overwrite=True``.
    """
    from tqdm.auto import tqdm

    s = spec(seed, **sizes)
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        for d in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        jobs = []
        for split in SPLITS:
            for i in range(s[f"n_{split}"]):
                jobs.append((tmp, s["seed"], split, i, s["image_size"], s["num_classes"]))
        if workers is None:
            workers = min(os.cpu_count() or 1, 8)
        results = []
        bar = tqdm(total=len(jobs), desc="synthetic benchmark", disable=not progress)
        if workers and workers > 1 and len(jobs) > 32:
            import multiprocessing as mp

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for r in pool.imap(_work, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_work(job))
                bar.update()
        bar.close()

        infos = dict(results)
        K = s["num_classes"]
        for split in SPLITS:
            ids = [_image_id(split, i) for i in range(s[f"n_{split}"])]
            write_id_list(tmp / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
            if split == "train":
                write_id_list(tmp / "ImageSets" / "Segmentation" / "train_aug.txt", ids)
        (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in PART_PATTERNS[:K]))
        labels = {iid: sorted({o["class_index"] for o in info["objects"]}) for iid, info in infos.items()}
        (tmp / "cls_labels.json").write_text(json.dumps(labels, sort_keys=True))
        (tmp / "instances.json").write_text(json.dumps(infos, sort_keys=True))
        (tmp / "spec.json").write_text(json.dumps(s, indent=2, sort_keys=True))
        seconds = time.perf_counter() - t0
        (tmp / "README.md").write_text(_readme(s, seconds))
        (tmp / _MARKER).write_text(json.dumps({**s, "seconds": round(seconds, 2)}, sort_keys=True))

        if _keep_complete and _marker_matches(root, s):
            pass  # another process finished the same set first: keep it, drop ours
        elif root.exists():
            if any(root.iterdir()):
                trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(root, trash)
                os.replace(tmp, root)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                root.rmdir()
                os.replace(tmp, root)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure(root=None, seed: int = 0, *, workers: int | None = None, progress: bool = True, **sizes) -> Path:
    """The benchmark folder for ``(seed, sizes)``, generating it only when needed.

    The folder is ``<root>/synthetic-v<version>-<hash of spec>`` with ``root`` defaulting to
    :func:`default_root`. It is generated when its completion marker (written last, holding
    the same :func:`spec`) is absent; generation goes to a temporary folder renamed into place,
    so concurrent callers and interrupted runs never see a half-written set.
    """
    s = spec(seed, **sizes)
    base = Path(root).expanduser() if root is not None else default_root()
    folder = base / f"synthetic-v{GENERATOR_VERSION}-{spec_hash(s)}"
    if _marker_matches(folder, s):
        return folder
    try:
        generate(folder, seed=seed, workers=workers, overwrite=True, progress=progress, _keep_complete=True, **sizes)
    except OSError:
        # another process may have renamed its copy into place at the same moment
        if not _marker_matches(folder, s):
            raise
    return folder


# --------------------------------------------------------------------------------------
# instances and coverage
# --------------------------------------------------------------------------------------
def load_instances(root) -> dict:
    """``instances.json`` of a generated benchmark: id → info (see :func:`render`)."""
    p = Path(root) / "instances.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (expected a benchmark written by synthetic.generate)")
    return json.loads(p.read_text())


def instance_masks(root, image_id: str, instances: dict | None = None) -> list[dict]:
    """Per object of ``image_id``: its info plus ``mask`` (bool H×W, visible pixels, from
    SegmentationObject/) and ``part_mask`` (bool H×W, visible emblem pixels)."""
    root = Path(root)
    info = (instances or load_instances(root))[image_id]
    inst = load_mask(root / "SegmentationObject" / f"{image_id}.png")
    out = []
    for o in info["objects"]:
        m = inst == o["instance"]
        pm = np.zeros_like(m)
        x0, y0, x1, y1 = o["part_box"]
        pm[y0:y1, x0:x1] = m[y0:y1, x0:x1]
        out.append({**o, "mask": m, "part_mask": pm})
    return out


def object_coverage(cams: np.ndarray, objects: list[dict], threshold: float = 0.3) -> list[dict]:
    """How much of each object a class map covers (the paper's "partial activation" measure).

    ``cams``: K×H×W class maps normalised to [0, 1] (channel k ↔ class k), ``objects``: from
    :func:`instance_masks`. Per object: ``coverage`` = fraction of its pixels where its class map
    exceeds ``threshold``; ``part_coverage`` = the same on its emblem; ``body_coverage`` = on
    the rest of the object; ``part_fraction`` = emblem pixels / object pixels.
    """
    cams = np.asarray(cams)
    out = []
    for o in objects:
        on = cams[o["class_index"]] > threshold
        m, pm = o["mask"], o["part_mask"]
        body = m & ~pm
        out.append(
            dict(
                class_index=o["class_index"],
                area=int(m.sum()),
                coverage=float(on[m].mean()) if m.any() else float("nan"),
                part_coverage=float(on[pm].mean()) if pm.any() else float("nan"),
                body_coverage=float(on[body].mean()) if body.any() else float("nan"),
                part_fraction=float(pm.sum() / max(1, m.sum())),
            )
        )
    return out


def summarize(root, split: str | None = None) -> dict:
    """Dataset statistics from ``instances.json``: images, objects per image, mean object
    area (fraction of the image), mean emblem fraction of its object, share of objects
    occluded by a later one, decoy share, class counts."""
    inst = load_instances(root)
    if split is not None:
        inst = {k: v for k, v in inst.items() if v["split"] == split}
    objs = [o for v in inst.values() for o in v["objects"]]
    if not objs:
        return dict(images=len(inst), objects=0)
    S2 = np.array([v["size"][0] * v["size"][1] for v in inst.values() for _ in v["objects"]], np.float64)
    area = np.array([o["area"] for o in objs], np.float64)
    part = np.array([o["part_area"] for o in objs], np.float64)
    full = np.array([o["full_area"] for o in objs], np.float64)
    counts = np.bincount([o["class_index"] for o in objs])
    return dict(
        images=len(inst),
        objects=len(objs),
        objects_per_image=len(objs) / len(inst),
        mean_object_area_fraction=float(np.mean(area / S2)),
        mean_object_area_px=float(area.mean()),
        mean_part_fraction=float(np.mean(part / area)),
        part_fraction_range=(float(np.min(part / area)), float(np.max(part / area))),
        mean_part_size_px=float(np.mean([o["part_size"] for o in objs])),
        occluded_share=float(np.mean(area < full)),
        decoy_share=float(np.mean([v["decoys"] > 0 for v in inst.values()])),
        class_counts=counts.tolist(),
    )


def check_consistency(root, ids: Sequence[str] | None = None) -> None:
    """Raise ``AssertionError`` if a mask disagrees with ``cls_labels.json`` or
    ``instances.json`` (used by tests; cheap enough for a few hundred images)."""
    root = Path(root)
    names = (root / "classes.txt").read_text().split()
    labels = json.loads((root / "cls_labels.json").read_text())
    inst = load_instances(root)
    for iid in ids if ids is not None else sorted(labels):
        sem = load_mask(root / "SegmentationClass" / f"{iid}.png")
        vec = image_labels(sem, len(names))
        assert sorted(np.flatnonzero(vec).tolist()) == labels[iid], iid
        assert IGNORE_INDEX not in np.unique(sem)
        assert sorted(o["class_index"] for o in inst[iid]["objects"]) == labels[iid], iid
