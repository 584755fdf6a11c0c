"""Test helper: turn ../shared/data/coco128_seg (COCO photos + YOLO-seg polygons) into a small
VOC-layout devkit with VOC-style class masks.

Mapping (from coco128_seg/SOURCES.md): COCO-80 index → VOC index 1..20; objects of other COCO
classes are painted 255 (ignore). Non-VOC objects are painted first and VOC objects on top,
larger polygons before smaller ones, so every VOC object stays visible (painter's order).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# COCO-80 index → VOC class value (1..20), typed from coco128_seg/SOURCES.md
COCO_TO_VOC = {
    0: 15, 1: 2, 2: 7, 3: 14, 4: 1, 5: 6, 6: 19, 8: 4, 14: 3, 15: 8, 16: 12, 17: 13,
    18: 17, 19: 10, 39: 5, 56: 9, 57: 18, 58: 16, 60: 11, 62: 20,
}


def read_polygons(label_file: Path):
    """[(coco_class, [(x, y), ...] normalised)] from one YOLO-seg label file."""
    out = []
    if not label_file.is_file():
        return out
    for ln in label_file.read_text().splitlines():
        parts = ln.split()
        if len(parts) < 7:
            continue
        cls = int(parts[0])
        xy = np.asarray(parts[1:], np.float64).reshape(-1, 2)
        out.append((cls, xy))
    return out


def _poly_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def rasterise(polys, width: int, height: int) -> np.ndarray:
    """VOC-style uint8 mask (0 bg, 1..20 VOC classes, 255 non-VOC objects)."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    non_voc = [(c, xy) for c, xy in polys if c not in COCO_TO_VOC]
    voc = sorted(((c, xy) for c, xy in polys if c in COCO_TO_VOC), key=lambda t: -_poly_area(t[1]))
    for c, xy in non_voc + voc:
        pts = [(float(x * width), float(y * height)) for x, y in xy]
        draw.polygon(pts, fill=COCO_TO_VOC.get(c, 255))
    return np.asarray(mask, np.uint8)


def expected_labels(polys) -> np.ndarray:
    """The 20-dim label vector straight from the polygon file (independent of any mask)."""
    vec = np.zeros(20, np.float32)
    for c, _ in polys:
        if c in COCO_TO_VOC:
            vec[COCO_TO_VOC[c] - 1] = 1
    return vec


def build_devkit(coco_root: Path, out: Path, palette) -> tuple[Path, dict]:
    """Write out/JPEGImages (symlinks), out/SegmentationClass (palette PNGs) and
    out/ImageSets/Segmentation/coco.txt. Returns (out, id → expected label vector)."""
    coco_root = Path(coco_root)
    ids = [ln.strip() for ln in (coco_root / "sample.txt").read_text().splitlines() if ln.strip()]
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    expected = {}
    for iid in ids:
        src = coco_root / "images" / "train2017" / f"{iid}.jpg"
        dst = out / "JPEGImages" / f"{iid}.jpg"
        try:
            os.symlink(src, dst)
        except OSError:
            shutil.copy(src, dst)
        with Image.open(src) as im:
            w, h = im.size
        polys = read_polygons(coco_root / "labels" / "train2017" / f"{iid}.txt")
        m = Image.fromarray(rasterise(polys, w, h))
        m.putpalette(palette)
        m.save(out / "SegmentationClass" / f"{iid}.png")
        expected[iid] = expected_labels(polys)
    (out / "ImageSets" / "Segmentation" / "coco.txt").write_text("\n".join(ids) + "\n")
    return out, expected
