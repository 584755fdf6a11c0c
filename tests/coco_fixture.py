"""Test helper: turn ../shared/data/coco128_seg (COCO photos + YOLO-seg polygons) into a small
VOC-layout devkit with VOC-style class masks (:func:`build_devkit`), or into an MS COCO
``instances_*.json`` with crowd regions in RLE (:func:`write_instances`).

Mapping (from coco128_seg/SOURCES.md): COCO-80 index → VOC index 1..20; objects of other COCO
classes are painted 255 (ignore). Non-VOC objects are painted first and VOC objects on top,
larger polygons before smaller ones, so every VOC object stays visible (painter's order).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from conftest import shared_path
from transcam_nb.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, rle_to_string

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


# ---------------------------------------------------------------------------------- instances JSON
IDS = ["000000000030", "000000000034", "000000000036", "000000000049", "000000000061",
       "000000000064", "000000000250"]  # 250 has no annotation in the source
KITE = COCO_CLASSES.index("kite")  # used only for the crowd regions: in no image's polygons here
CROWD_BOX = {"000000000049": ((0, 60), (0, 90), "compressed"),  # (rows, cols, RLE form) at scale 1
             "000000000061": ((300, 380), (10, 200), "uncompressed")}


def runs(mask):
    """Column-major run lengths starting with zeros (written independently of the loader)."""
    flat = mask.T.reshape(-1).tolist()
    rl = [len(list(g)) for _, g in itertools.groupby(flat)]
    return ([0] + rl) if flat and flat[0] else rl


def crowd_mask(h, w, iid, scale: float = 1.0):
    (r0, r1), (c0, c1), _ = CROWD_BOX[iid]
    m = np.zeros((h, w), bool)
    m[int(r0 * scale):int(r1 * scale), int(c0 * scale):int(c1 * scale)] = True
    return m


def write_instances(root, year=2017, split="train", ids=IDS, scale: float = 1.0):
    """root/annotations/instances_<split><year>.json + root/<split><year>/ images (links; copies
    resized by ``scale`` when it is not 1), with the official 80 categories and the crowd regions
    of :data:`CROWD_BOX` in RLE. Returns {id: (polygons, (h, w))}."""
    src = shared_path("data", "coco128_seg")
    name = f"{split}{year}"
    img_dir = Path(root) / name
    img_dir.mkdir(parents=True, exist_ok=True)
    (Path(root) / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns, info = [], [], {}
    for iid in ids:
        fn = f"COCO_{name}_{iid}.jpg" if year == 2014 else f"{iid}.jpg"
        s = src / "images" / "train2017" / f"{iid}.jpg"
        with Image.open(s) as im:
            w, h = im.size
            if scale != 1.0:
                w, h = max(1, round(w * scale)), max(1, round(h * scale))
                im.convert("RGB").resize((w, h), Image.BILINEAR).save(img_dir / fn, quality=90)
        if scale == 1.0:
            try:
                os.symlink(s, img_dir / fn)
            except OSError:
                shutil.copy(s, img_dir / fn)
        images.append({"id": int(iid), "file_name": fn, "height": h, "width": w})
        polys = read_polygons(src / "labels" / "train2017" / f"{iid}.txt")
        info[iid] = (polys, (h, w))
        for c, xy in polys:
            pts = (xy * [w, h]).reshape(-1).round(2).tolist()
            anns.append({"id": len(anns) + 1, "image_id": int(iid), "category_id": COCO_CATEGORY_IDS[c],
                         "segmentation": [pts], "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1]})
        if iid in CROWD_BOX:
            rl = runs(crowd_mask(h, w, iid, scale))
            counts = rle_to_string(rl) if CROWD_BOX[iid][2] == "compressed" else rl
            anns.append({"id": len(anns) + 1, "image_id": int(iid), "category_id": COCO_CATEGORY_IDS[KITE],
                         "segmentation": {"size": [h, w], "counts": counts}, "iscrowd": 1,
                         "area": 1.0, "bbox": [0, 0, 1, 1]})
    cats = [{"id": cid, "name": n, "supercategory": "x"} for cid, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    cats = cats[::-1]  # the loader must sort by id, not trust the file order
    data = {"info": {}, "images": images, "annotations": anns, "categories": cats}
    (Path(root) / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    return info
