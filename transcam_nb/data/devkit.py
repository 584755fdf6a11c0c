"""The files of a VOC-layout devkit, one at a time: class names, the palette, id lists, images,
masks (palette/RGB PNG or SBD ``.mat``) and image-level label files.

No datasets here: :mod:`transcam_nb.data.voc` builds :class:`~transcam_nb.data.voc.VOCDataset`
on these readers and re-exports every public name of this module, so
``from transcam_nb.data.voc import load_mask`` keeps working. The layout, the list-file
formats and the label sources are described in :mod:`transcam_nb.data.voc`; the SBD
folder logic (the ``train_aug`` list, ``.mat`` → PNG conversion) is in
:mod:`transcam_nb.data.sbd`. Errors name the path and what was expected.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

__all__ = [
    "VOC_CLASSES",
    "VOC_PALETTE",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "voc_palette",
    "image_labels",
    "resolve_root",
    "read_class_names",
    "read_id_list",
    "write_id_list",
    "split_list_path",
    "read_sbd_mat",
    "save_mask",
    "load_rgb",
    "load_mask",
    "load_cls_labels",
    "xml_labels",
]

#: The 20 PASCAL VOC foreground classes, in the order of the label vector (docs/reference.md §6):
#: the one list, :data:`transcam_nb.config.VOC_CLASSES`.
from ..config import VOC_CLASSES  # noqa: E402

#: Mask value for "void"/ignored pixels (VOC's boundary band).
IGNORE_INDEX = 255

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def voc_palette(n: int = 256) -> list[int]:
    """The VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * n`` ints.

    The standard rule: the bits of the label index are dealt out in turn to red, green and
    blue (bit 0 → red, bit 1 → green, bit 2 → blue, bit 3 → red again, ...), and each colour
    channel receives them from its most significant bit downwards. So 1 → (128, 0, 0),
    2 → (0, 128, 0), 3 → (128, 128, 0), 8 → (64, 0, 0), 255 → (224, 224, 192).
    """
    out: list[int] = []
    for label in range(n):
        rgb = [0, 0, 0]
        value = label
        shift = 7
        while value:
            for ch in range(3):
                rgb[ch] |= (value & 1) << shift
                value >>= 1
            shift -= 1
        out.extend(rgb)
    return out


#: Flat 768-entry palette for ``Image.putpalette`` (index 255 = void colour 224, 224, 192).
VOC_PALETTE: list[int] = voc_palette(256)


# --------------------------------------------------------------------------------------
# labels from masks
# --------------------------------------------------------------------------------------
def image_labels(mask, num_classes: int = 20) -> np.ndarray:
    """K-dim float32 multi-hot vector of the classes present in a class-index mask.

    ``mask`` is an H×W integer array or a PIL "P"/"L" image with 0 = background,
    1..K = classes, 255 = ignore. Class k (0-based) is present when value k+1 occurs.
    Values in K+1..254 (or negative) raise :class:`~transcam_nb.errors.InputError`: they are not valid labels.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"image_labels expects a 2-D class-index mask, got shape {arr.shape}")
    values = np.unique(arr)
    bad = values[(values < 0) | ((values > num_classes) & (values != IGNORE_INDEX))]
    if bad.size:
        raise InputError(
            f"mask values {bad.tolist()} are not class indices: expected 0 (background), "
            f"1..{num_classes} or {IGNORE_INDEX} (ignore)"
        )
    out = np.zeros(num_classes, np.float32)
    fg = values[(values >= 1) & (values <= num_classes)].astype(np.int64)
    out[fg - 1] = 1.0
    return out


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def resolve_root(root) -> Path:
    """The devkit folder holding ``JPEGImages/``; ``root`` may also be a parent holding
    ``VOCdevkit/VOC2012`` or ``VOC2012``. Raises ``FileNotFoundError`` naming the path."""
    if root is None:
        raise FileNotFoundError("no dataset root given: expected a folder holding JPEGImages/")
    p = Path(root).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset root {p} does not exist (expected a folder holding JPEGImages/)")
    for cand in (p, p / "VOC2012", p / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(
        f"dataset root {p} has no JPEGImages/ folder (nor VOC2012/ or VOCdevkit/VOC2012/ under it); "
        "expected the VOC devkit layout: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"
    )


def read_class_names(root, default: Sequence[str] = VOC_CLASSES) -> tuple[str, ...]:
    """Foreground class names from ``root/classes.txt`` (one a line, no background) when it
    exists, else ``default`` (VOC's 20)."""
    path = Path(root) / "classes.txt"
    if not path.exists():
        return tuple(default)
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if names and names[0].lower() in ("background", "__background__", "_background_"):
        names = names[1:]
    if not names:
        raise InputError(f"{path} lists no class names (expected one foreground class name a line)")
    if len(set(names)) != len(names):
        raise InputError(f"{path} repeats class names: {names}")
    if len(names) > 254:
        raise InputError(f"{path} lists {len(names)} classes; masks are 8-bit, at most 254 fit")
    return tuple(names)


def _id_from_token(token: str) -> str:
    """``/JPEGImages/x.jpg`` → ``x``; a plain id is kept (only image/mask extensions are cut)."""
    name = token.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS + (".mat",) else name


def read_id_list(path) -> list[str]:
    """Image ids from a list file: plain ids, or the authors' lines
    ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` (id = basename of the first column
    without extension). Blank lines and ``#`` comments are skipped; duplicates are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist (expected one image id a line)")
    ids = []
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        ids.append(_id_from_token(ln.split()[0]))
    return ids


def write_id_list(path, ids: Iterable[str]) -> Path:
    """Write ids one a line, atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(f"{i}\n" for i in ids))
    os.replace(tmp, path)
    return path


def split_list_path(root, split: str) -> Path:
    """``root/ImageSets/Segmentation/<split>.txt`` (``train_aug`` also finds ``trainaug.txt``).
    Raises ``FileNotFoundError`` naming the path and the lists that do exist."""
    root = Path(root)
    folder = root / "ImageSets" / "Segmentation"
    names = [split]
    if split in ("train_aug", "trainaug"):
        names = ["train_aug", "trainaug"]
    for n in names:
        p = folder / f"{n}.txt"
        if p.is_file():
            return p
    have = sorted(q.stem for q in folder.glob("*.txt")) if folder.is_dir() else []
    raise FileNotFoundError(
        f"split list {folder / (split + '.txt')} does not exist; lists found in {folder}: "
        f"{have or 'none'}"
    )


def read_sbd_mat(path) -> np.ndarray:
    """The class mask (uint8 H×W, 0..20) of an SBD ``cls/<id>.mat`` file (GTcls.Segmentation).
    Needs scipy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SBD mask {path} does not exist")
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy is a dependency
        raise ImportError("reading SBD .mat masks needs scipy (pip install scipy)") from e
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:
        raise InputError(f"cannot read SBD mask {path}: {e}") from e
    gt = mat.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        raise InputError(f"{path} has no GTcls.Segmentation field (expected an SBD cls/*.mat file)")
    seg = np.asarray(gt.Segmentation)
    if seg.ndim != 2:
        raise InputError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected H×W")
    return seg.astype(np.uint8)


def save_mask(path, mask: np.ndarray, palette: Sequence[int] = VOC_PALETTE) -> Path:
    """Save a class-index mask as an 8-bit palette PNG (VOC colours), atomically."""
    path = Path(path)
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise InputError(f"mask for {path} must be H×W with values 0..255, got shape {arr.shape}")
    im = Image.fromarray(arr.astype(np.uint8))
    im.putpalette(list(palette))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _to_rgb(img: Image.Image, path) -> Image.Image:
    """Convert any Pillow mode to RGB: grayscale (L, I;16, I, F), CMYK, YCbCr, LAB, HSV,
    palette (P, PA) and alpha modes (RGBA, LA; alpha is dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(f"cannot convert image {path} (mode {img.mode}) to RGB: {e}") from e


def load_rgb(path) -> Image.Image:
    """Open an image file as a fully decoded PIL RGB image. Raises ``FileNotFoundError`` when
    absent and :class:`~transcam_nb.errors.InputError` (naming the path) when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise InputError(f"cannot decode image {path} (corrupt or not an image): {e}") from e


def _rgb_mask_to_index(arr: np.ndarray, palette: Sequence[int], path) -> np.ndarray:
    pal = np.asarray(palette[: 3 * 256], np.int64).reshape(-1, 3)
    code = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {}
    for idx in range(len(pal_code) - 1, -1, -1):  # first index wins for repeated colours
        lut[int(pal_code[idx])] = idx
    uniq, inv = np.unique(code, return_inverse=True)
    out_vals = []
    for u in uniq:
        if int(u) not in lut:
            r, g, b = (int(u) >> 16) & 255, (int(u) >> 8) & 255, int(u) & 255
            raise InputError(f"RGB mask {path} has colour {(r, g, b)} that is not in the VOC palette")
        out_vals.append(lut[int(u)])
    return np.asarray(out_vals, np.uint8)[inv.reshape(code.shape)]


def load_mask(path) -> np.ndarray:
    """A class-index mask (uint8 H×W) from a palette/grayscale PNG (the stored indices are
    used as they are), an RGB colour-coded PNG (mapped through the VOC palette) or an SBD
    ``.mat`` file."""
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return read_sbd_mat(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
                    raise InputError(f"mask {path} has values outside 0..255")
                return arr.astype(np.uint8)
            if im.mode in ("RGB", "RGBA"):
                return _rgb_mask_to_index(np.asarray(im.convert("RGB")), VOC_PALETTE, path)
            raise InputError(f"mask {path} has mode {im.mode}; expected a palette (P) or grayscale (L) PNG")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"cannot decode mask {path} (corrupt or not an image): {e}") from e


def load_cls_labels(path, class_names: Sequence[str] = VOC_CLASSES, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Image labels from a file: the authors' ``cls_labels.npy`` (a pickled dict id →
    float32 (K,), docs/reference.md §6: reading it executes pickle, so ``allow_pickle=True`` must be
    passed explicitly) or a JSON object ``{id: [class indices | class names]}`` or
    ``{id: multi-hot list of length K}``. Returns id → float32 (K,)."""
    path = Path(path)
    K = len(class_names)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"label file {path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise InputError(f"label file {path} must hold a JSON object {{id: [labels]}}")
        return {str(k): _labels_to_vector(v, class_names, f"{path}[{k!r}]") for k, v in raw.items()}
    try:
        arr = np.load(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle:
            raise InputError(
                f"{path} holds pickled Python objects (the authors' cls_labels.npy is a pickled dict); "
                "pass allow_pickle=True if you trust this file"
            ) from e
        raise InputError(f"cannot read label file {path}: {e}") from e
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        arr = arr.item()
    if not isinstance(arr, dict):
        raise InputError(f"{path} must hold a dict id → {K}-dim label vector, got {type(arr).__name__}")
    out = {}
    for k, v in arr.items():
        v = np.asarray(v, np.float32).reshape(-1)
        if v.shape != (K,):
            raise InputError(f"{path}: labels of {k!r} have shape {v.shape}, expected ({K},)")
        out[str(k)] = v
    return out


def _labels_to_vector(value, class_names: Sequence[str], where: str) -> np.ndarray:
    """Class names, 0-based class indices, a string of names/indices separated by spaces,
    commas, semicolons or ``|``, or a K-long 0/1 multi-hot list → (K,) float32.

    A list of K numbers that are all 0/1 is read as a multi-hot vector when it cannot be an
    index list (it repeats a value); otherwise numbers are class indices.
    """
    K = len(class_names)
    vec = np.zeros(K, np.float32)
    if isinstance(value, str):
        value = [t for t in value.replace(";", " ").replace(",", " ").replace("|", " ").split() if t]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: expected a list of class names or indices, got {value!r}")
    numeric = all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in value)
    if numeric and len(value) == K and K > 0 and set(float(x) for x in value) <= {0.0, 1.0}:
        if len(set(value)) < len(value):
            return np.asarray(value, np.float32)
    index = {n: i for i, n in enumerate(class_names)}
    lower = {n.lower(): i for i, n in enumerate(class_names)}
    for x in value:
        if isinstance(x, str):
            key = x.strip()
            if key in index:
                vec[index[key]] = 1
            elif key.lower() in lower:
                vec[lower[key.lower()]] = 1
            elif key.lstrip("-").isdigit():
                x = int(key)
                if not 0 <= x < K:
                    raise InputError(f"{where}: class index {x} out of range 0..{K - 1}")
                vec[x] = 1
            else:
                raise InputError(f"{where}: unknown class name {key!r}; known: {list(class_names)}")
        elif isinstance(x, (int, np.integer)) or (isinstance(x, float) and float(x).is_integer()):
            x = int(x)
            if not 0 <= x < K:
                raise InputError(f"{where}: class index {x} out of range 0..{K - 1}")
            vec[x] = 1
        else:
            raise InputError(f"{where}: cannot read label {x!r} (expected a class name or 0-based index)")
    return vec


def xml_labels(path, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """Labels from a VOC ``Annotations/<id>.xml``: every ``<object><name>`` in ``class_names``
    (difficult and truncated objects included, as the authors' make_cls_labels.py)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise InputError(f"cannot parse annotation {path}: {e}") from e
    index = {n: i for i, n in enumerate(class_names)}
    vec = np.zeros(len(class_names), np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in index:
            vec[index[name]] = 1
    return vec
