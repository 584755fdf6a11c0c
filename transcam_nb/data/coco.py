"""MS COCO (2014 or 2017) from the official ``instances_*.json``: image labels and class masks.

The second standard WSSS benchmark. Weakly supervised work trains on ``train2014`` with image
labels and evaluates pseudo labels / segmentation on ``val2014``, with the 80 "things" classes
plus background (81 classes) and the crowd regions ignored. The ``coco`` profile
(:mod:`transcam_nb.config`) runs every pipeline stage on it: :func:`transcam_nb.data.roots.build_dataset`
builds this dataset wherever a VOC profile gets a :class:`~transcam_nb.data.voc.VOCDataset`.

Layout. ``root`` holds the annotation files and one image folder per split::

    root/
      annotations/instances_train2014.json   (or instances_train2017.json, ...)
      train2014/<file_name>                  (or images/train2014/<file_name>)
      val2014/<file_name>

``split`` is ``"train2014"``, ``"val2014"``, ``"train2017"``, ``"val2017"`` (any name
``<s>`` with ``annotations/instances_<s>.json``), or ``"train"`` / ``"val"``: these take the
2014 files when present, else the 2017 ones (``year=`` picks one explicitly). The image file
names are read from the JSON (2014: ``COCO_train2014_000000000009.jpg``, 2017:
``000000000009.jpg``); an item's ``id`` is the file stem.

Classes. The JSON's categories, sorted by their (sparse) category id, get the contiguous
indices 0..K-1 of the label vector and the mask values 1..K (background 0). With the official
80 categories (ids 1..90 with gaps) that is :data:`COCO_CLASSES`, mask values 0..80, 81 classes
with background.

Image labels come from the annotations: class k is present when the image has at least one
annotation of that category (crowd annotations included: the objects are there). They do not
depend on the mask, so a class whose only instance is a crowd region (painted 255) or too thin
to cover a pixel is in the label but not in the mask.

Masks (uint8 H×W) are rasterised from the annotations without pycocotools: polygons with
Pillow's ``ImageDraw.polygon``, RLE (uncompressed ``counts`` lists and the compressed COCO
string) with :func:`rle_decode`. (Checked once against pycocotools 2.0.11: the same compressed
strings; Pillow's polygons cover about 1 % more pixels, the boundary pixels pycocotools' half-open
rule leaves out.) Order of painting: crowd regions first (value 255 = ignore),
then the non-crowd instances from the largest to the smallest, so a small object lying on a big
one stays visible and an individually annotated instance inside a crowd region keeps its class.

Datasets. :class:`COCODataset` has the modes and item types of
:class:`~transcam_nb.data.voc.VOCDataset` (``"cls"``, ``"seg"``, ``"infer"``; :class:`Sample`
items without a transform). By default images without any annotation are left out
(``skip_empty=True``), as the WSSS image lists do.

Errors name the path: ``FileNotFoundError`` for a missing root, annotation file, image folder
or image; ``ValueError`` for a JSON that is not the instances format, an annotation whose
category is not listed, a malformed segmentation or an image whose size differs from the JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .voc import IGNORE_INDEX, MODES, _LabelledImages

__all__ = [
    "COCO_CLASSES",
    "COCO_CATEGORY_IDS",
    "COCODataset",
    "annotation_path",
    "rle_decode",
    "rle_encode",
    "rle_to_string",
    "rle_from_string",
    "polygon_mask",
    "segmentation_mask",
    "rasterise_instances",
]

#: The 80 COCO "things" categories, in the order of their official (sparse) category ids.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: Official category ids of :data:`COCO_CLASSES` (1..90; 12, 26, 29, 30, 45, 66, 68, 69, 71, 83
#: are unused). ``COCO_CATEGORY_IDS[k]`` has mask value ``k + 1``.
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80


# --------------------------------------------------------------------------------------
# RLE (column-major run lengths, starting with a run of zeros)
# --------------------------------------------------------------------------------------
def rle_from_string(s: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string.

    Each count is written in 5-bit groups, least significant first, as characters
    ``48 + group`` with bit 0x20 set while more groups follow; bit 0x10 of the last group is
    the sign. From the fourth count on, the stored value is the difference to the count two
    places before (runs of the same colour tend to be alike).
    """
    if not isinstance(s, str):
        raise TypeError(f"compressed RLE counts must be a str, got {type(s).__name__}")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("compressed RLE string ends inside a count")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE string has an invalid character {s[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string of a list of run lengths (inverse of :func:`rle_from_string`)."""
    out = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(rle: dict) -> np.ndarray:
    """Boolean H×W mask of an RLE dict ``{"size": [h, w], "counts": list | str}``.

    The runs alternate 0, 1, 0, ... starting with zeros and walk the image column by column
    (Fortran order), as in the COCO annotation format.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"RLE must be a dict with 'size': [h, w] and 'counts'; got {rle!r:.80}") from e
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(rle_from_string(counts) if isinstance(counts, str) else counts, np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("RLE has a negative run length")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE run lengths sum to {int(runs.sum())}, expected h*w = {h}*{w} = {h * w}")
    values = np.zeros(runs.size, bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """RLE dict of a boolean H×W mask (``counts`` a compressed string or a list of ints)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    flat = m.T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    counts = rle_to_string(runs) if compressed else [int(r) for r in runs]
    return {"size": [int(h), int(w)], "counts": counts}


# --------------------------------------------------------------------------------------
# rasterisation
# --------------------------------------------------------------------------------------
def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Boolean H×W union of COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel units).
    Polygons with fewer than 3 points are skipped."""
    img = Image.new("1", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        xy = np.asarray(poly, np.float64).reshape(-1)
        if xy.size % 2:
            raise ValueError(f"polygon has an odd number of coordinates ({xy.size})")
        if xy.size < 6:
            continue
        draw.polygon([(float(x), float(y)) for x, y in xy.reshape(-1, 2)], fill=1, outline=1)
    return np.array(img, dtype=bool)


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Boolean H×W mask of one annotation's ``segmentation`` (polygon list or RLE dict)."""
    if isinstance(segmentation, dict):
        m = rle_decode(segmentation)
        if m.shape != (height, width):
            raise ValueError(f"RLE size {list(m.shape)} differs from the image size [{height}, {width}]")
        return m
    if isinstance(segmentation, (list, tuple)):
        return polygon_mask(segmentation, height, width)
    raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")


def rasterise_instances(instances: Sequence[tuple[int, bool, object]], height: int, width: int) -> np.ndarray:
    """uint8 H×W class mask from ``[(mask value, iscrowd, segmentation), ...]``: crowd regions
    255 first, then the other instances from the largest to the smallest (see the module
    docstring)."""
    out = np.zeros((height, width), np.uint8)
    things = []
    for value, crowd, seg in instances:
        m = segmentation_mask(seg, height, width)
        if crowd:
            out[m] = IGNORE_INDEX
        else:
            things.append((int(m.sum()), value, m))
    for _, value, m in sorted(things, key=lambda t: -t[0]):  # stable: equal areas keep file order
        out[m] = value
    return out


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def _check_root(root) -> Path:
    if root is None:
        raise FileNotFoundError("no COCO root given: expected a folder holding annotations/instances_<split>.json")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"COCO root {p} does not exist (expected a folder holding annotations/instances_<split>.json "
            "and the image folders train2014/, val2014/ or train2017/, val2017/)"
        )
    return p


def annotation_path(root, split: str, year: int | str | None = None) -> tuple[Path, str]:
    """``(root/annotations/instances_<split>.json, split name)`` for ``split`` such as
    ``train2014`` or ``val2017``; ``train`` / ``val`` take ``year`` (default: 2014 when its
    file exists, else 2017). Raises ``FileNotFoundError`` naming the path and the files found."""
    root = _check_root(root)
    folder = root / "annotations"
    if year is not None:
        names = [f"{split}{year}"] if split in ("train", "val", "test") else [split]
    elif split in ("train", "val", "test"):
        names = [f"{split}2014", f"{split}2017"]
    else:
        names = [split]
    for n in names:
        for cand in (folder / f"instances_{n}.json", root / f"instances_{n}.json"):
            if cand.is_file():
                return cand, n
    have = sorted(q.name for q in folder.glob("instances_*.json")) if folder.is_dir() else []
    tried = " or ".join(str(folder / f"instances_{n}.json") for n in names)
    raise FileNotFoundError(f"COCO annotation file {tried} does not exist; found in {folder}: {have or 'none'}")


def _read_instances(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {path} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(
            f"COCO annotation file {path} lacks the list(s) {missing}: expected the instances format "
            "with 'images', 'annotations' and 'categories'"
        )
    return data


class COCODataset(_LabelledImages):
    """A split of MS COCO read from its official ``instances_<split>.json``.

    Parameters
    ----------
    root : folder holding ``annotations/`` and the image folders (see the module docstring).
    split : ``"train2014"``, ``"val2014"``, ``"train2017"``, ``"val2017"``, ``"train"``, ``"val"``.
    mode : ``"cls"``, ``"seg"`` or ``"infer"``, with the items of :class:`~transcam_nb.data.voc.VOCDataset`.
    transform : applied to the PIL image ("cls", "infer") or to (image, mask) ("seg").
    year : 2014 or 2017 for ``split="train"`` / ``"val"`` (default: 2014 when present).
    annotation_file : use this JSON instead of ``root/annotations/instances_<split>.json``.
    image_dir : the image folder (default ``root/<split>``, else ``root/images/<split>``).
    skip_empty : leave out images without annotations (default, as the WSSS lists do).
    check_files : verify at construction that every image file exists.
    """

    def __init__(
        self,
        root,
        split: str = "train2014",
        mode: str = "cls",
        transform: Callable | None = None,
        *,
        year: int | str | None = None,
        annotation_file=None,
        image_dir=None,
        skip_empty: bool = True,
        check_files: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.root = _check_root(root)
        self.mode = mode
        self.transform = transform
        if annotation_file is not None:
            self.annotation_file = Path(annotation_file).expanduser()
            if not self.annotation_file.is_file():
                raise FileNotFoundError(f"COCO annotation file {self.annotation_file} does not exist")
            self.split = str(split)
        else:
            self.annotation_file, self.split = annotation_path(self.root, str(split), year)
        self.image_dir = self._find_image_dir(image_dir)

        data = _read_instances(self.annotation_file)
        where = str(self.annotation_file)
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.category_ids = tuple(int(c["id"]) for c in cats)
            self.class_names = tuple(str(c["name"]) for c in cats)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: every category needs an integer 'id' and a 'name' ({e})") from None
        if not self.class_names:
            raise ValueError(f"{where} lists no categories")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"{where} repeats category ids")
        if len(self.class_names) > 254:
            raise ValueError(f"{where} lists {len(self.class_names)} categories; 8-bit masks hold at most 254")
        index = {cid: k for k, cid in enumerate(self.category_ids)}

        images = {}
        for im in data["images"]:
            try:
                images[int(im["id"])] = (str(im["file_name"]), int(im["height"]), int(im["width"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: every image needs 'id', 'file_name', 'height' and 'width'; got {im!r:.120}") from None
        self._anns: dict[int, list[tuple[int, bool, object]]] = {i: [] for i in images}
        for a in data["annotations"]:
            try:
                iid, cid = int(a["image_id"]), int(a["category_id"])
                seg = a["segmentation"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{where}: every annotation needs 'image_id', 'category_id' and 'segmentation'; got {a!r:.120}"
                ) from None
            if cid not in index:
                raise ValueError(f"{where}: annotation {a.get('id')} has category_id {cid}, which is not in 'categories'")
            if iid not in images:
                raise ValueError(f"{where}: annotation {a.get('id')} refers to image_id {iid}, which is not in 'images'")
            if isinstance(seg, list):  # polygons as float32 arrays: a fraction of the memory of lists
                try:
                    seg = [np.asarray(poly, np.float32).reshape(-1) for poly in seg]
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: annotation {a.get('id')} has a malformed polygon") from None
            self._anns[iid].append((index[cid] + 1, bool(a.get("iscrowd", 0)), seg))
        del data

        keep = sorted(i for i in images if self._anns[i] or not skip_empty)
        self.image_ids = keep
        self._images = [images[i] for i in keep]
        self.ids = [Path(fn).stem for fn, _, _ in self._images]
        if check_files:
            missing = [str(self.image_path(i)) for i in range(len(self)) if not self.image_path(i).is_file()]
            if missing:
                more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
                raise FileNotFoundError(
                    f"{len(missing)} image(s) listed in {where} do not exist: {', '.join(missing[:3])}{more}"
                )

    def _find_image_dir(self, image_dir) -> Path:
        if image_dir is not None:
            d = Path(image_dir).expanduser()
            d = d if d.is_absolute() else self.root / d
            if not d.is_dir():
                raise FileNotFoundError(f"COCO image folder {d} does not exist")
            return d
        cands = [self.root / self.split, self.root / "images" / self.split]
        for d in cands:
            if d.is_dir():
                return d
        raise FileNotFoundError(
            f"COCO image folder {cands[0]} does not exist (nor {cands[1]}); expected the images of {self.split}"
        )

    # -- paths -------------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        return self.image_dir / self._images[index][0]

    def mask_path(self, index: int) -> Path:
        """The annotation file: every COCO image has a mask, rasterised from it (not a PNG:
        read it with :meth:`mask`, not ``load_mask``)."""
        return self.annotation_file

    # -- masks and labels ----------------------------------------------------------------
    def mask(self, index: int) -> np.ndarray:
        """The uint8 H×W class mask of item ``index`` (0 bg, 1..K, 255 crowd)."""
        _, h, w = self._images[index]
        try:
            return rasterise_instances(self._anns[self.image_ids[index]], h, w)
        except ValueError as e:
            raise ValueError(f"{self.annotation_file}, image {self.ids[index]!r}: {e}") from None

    def _read_mask(self, index: int, check_size) -> np.ndarray:
        _, h, w = self._images[index]
        if check_size is not None and tuple(check_size) != (w, h):
            raise ValueError(
                f"image {self.image_path(index)} is {check_size[0]}x{check_size[1]} (WxH) but "
                f"{self.annotation_file} says {w}x{h}"
            )
        return self.mask(index)

    def _label_needs_mask(self, index: int) -> bool:
        return False

    def _label_for(self, index: int, mask) -> np.ndarray:
        vec = np.zeros(self.num_classes, np.float32)
        for value, _, _ in self._anns[self.image_ids[index]]:
            vec[value - 1] = 1.0
        return vec

    def __repr__(self) -> str:
        return (
            f"COCODataset(root={str(self.root)!r}, split={self.split!r}, mode={self.mode!r}, "
            f"n={len(self)}, num_classes={self.num_classes})"
        )
