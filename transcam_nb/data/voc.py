"""PASCAL VOC 2012 (+ SBD) in the standard devkit layout: lists, labels, masks, datasets.

Every stage of the pipeline reads data through this module. Real users point it at VOC 2012
(optionally augmented with SBD); the book and CI point it at the embedded benchmark
(:mod:`transcam_nb.data.synthetic`), which is written in the same layout.

Layout (REFERENCE.md §6). ``root`` is the folder that holds ``JPEGImages/`` (for VOC that is
``VOCdevkit/VOC2012``; a parent holding ``VOCdevkit/VOC2012`` is accepted too)::

    root/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png        official masks (palette PNG: 0 bg, 1..K, 255 void)
      SegmentationClassAug/<id>.png     optional: VOC + SBD masks ("aug" set)
      Annotations/<id>.xml              optional: image labels from the XML object names
      ImageSets/Segmentation/<split>.txt   train / val / test / train_aug / any name
      classes.txt                       optional: foreground class names, one a line (the
                                        synthetic benchmark writes it); default VOC's 20

List files may hold plain ids (``2007_000032``) or the authors' two-column lines
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``): the id is the
basename of the first column without its extension (the authors slice characters
[-15:-4], which is the same for VOC ids).

Image-level labels (K-dim float32 multi-hot, K = number of foreground classes, class k ↔ mask
value k+1) come, in order of preference under ``label_source="auto"``:

1. from ``cls_labels`` when given: the authors' ``cls_labels.npy`` (a *pickled* dict id →
   20-dim float32; reading it needs ``allow_pickle=True``, an explicit opt-in) or a JSON file
   ``{id: [class indices or names] | multi-hot list}``;
2. from the mask (values 1..K present; 0 and 255 ignored), see :func:`image_labels`;
3. from ``Annotations/<id>.xml`` (every ``<object><name>``, difficult and truncated
   included, as the authors' ``make_cls_labels.py``).

Mask-derived and XML-derived labels can differ on real VOC (an object annotated in XML may be
too small or occluded to appear in the mask); the authors trained on XML labels.

Datasets. :class:`VOCDataset` ``(root, split, mode)`` with ``mode`` in

``"cls"``   classification. Without a transform an item is a :class:`Sample` (PIL RGB image,
            label vector, id, original size). With a transform ``t`` the item is the tuple
            ``(t(image), torch.tensor(label))`` ready for a ``DataLoader``'s default collate.
``"seg"``   segmentation. A :class:`Sample` with ``mask`` (uint8 H×W). With a transform the
            item is ``t(image, mask)``, i.e. ``(image_tensor, mask_tensor)`` for
            :class:`~transcam_nb.data.transforms.TrainTransform`.
``"infer"`` inference. A :class:`Sample` whose image is a uint8 H×W×3 array, with the label
            vector, id, original size ``(H, W)`` and the mask when one exists. Use
            ``DataLoader(ds, batch_size=None)`` (no collation) or ``collate_fn=collate_list``.

When the transform has a ``rng_for(index, epoch)`` method (TrainTransform does) the dataset
passes ``rng=transform.rng_for(index, self.epoch)`` after :meth:`VOCDataset.set_epoch` has been
called, so the augmentation of item ``index`` in epoch ``e`` is the same whatever the number of
DataLoader workers (the pattern of ``DistributedSampler.set_epoch``).

Errors name the path and what was expected: ``FileNotFoundError`` for a missing root, list,
image or mask; ``ValueError`` for a corrupt image, a mask whose size differs from its image,
mask values outside {0..K, 255}, malformed label files.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "VOC_CLASSES",
    "VOC_PALETTE",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "voc_palette",
    "image_labels",
    "Sample",
    "VOCDataset",
    "resolve_root",
    "read_class_names",
    "read_id_list",
    "split_list_path",
    "build_train_aug",
    "write_id_list",
    "load_cls_labels",
    "xml_labels",
    "read_sbd_mat",
    "convert_sbd",
    "load_rgb",
    "load_mask",
    "save_mask",
    "collate_list",
]

#: The 20 PASCAL VOC foreground classes, in the order of the label vector: the one list,
#: :data:`transcam_nb.config.VOC_CLASSES`.
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
# items
# --------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One dataset item (see the module docstring for what each mode fills in).

    ``image``      PIL RGB image ("cls", "seg") or uint8 H×W×3 array ("infer");
    ``label``      float32 K-dim multi-hot vector;
    ``id``         image id (file stem);
    ``orig_size``  (height, width) of the image as stored on disk;
    ``mask``       uint8 H×W class-index mask (0 bg, 1..K, 255 ignore) or ``None``.
    """

    image: object
    label: np.ndarray
    id: str
    orig_size: tuple[int, int]
    mask: np.ndarray | None = None

    def __getitem__(self, key: str):  # dict-style access: sample["label"]
        return getattr(self, key)


def collate_list(batch: list) -> list:
    """``collate_fn`` that keeps a batch as a plain list (for "infer" items)."""
    return list(batch)


# --------------------------------------------------------------------------------------
# labels from masks
# --------------------------------------------------------------------------------------
def image_labels(mask, num_classes: int = 20) -> np.ndarray:
    """K-dim float32 multi-hot vector of the classes present in a class-index mask.

    ``mask`` is an H×W integer array or a PIL "P"/"L" image with 0 = background,
    1..K = classes, 255 = ignore. Class k (0-based) is present when value k+1 occurs.
    Values in K+1..254 (or negative) raise ``ValueError``: they are not valid labels.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"image_labels expects a 2-D class-index mask, got shape {arr.shape}")
    values = np.unique(arr)
    bad = values[(values < 0) | ((values > num_classes) & (values != IGNORE_INDEX))]
    if bad.size:
        raise ValueError(
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
        raise ValueError(f"{path} lists no class names (expected one foreground class name a line)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path} repeats class names: {names}")
    if len(names) > 254:
        raise ValueError(f"{path} lists {len(names)} classes; masks are 8-bit, at most 254 fit")
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


def _sbd_dataset_dir(sbd_root: Path) -> Path | None:
    for cand in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    return None


def _sbd_ids(sbd_root) -> tuple[list[str], str]:
    """Ids SBD provides: SBD train ∪ val lists, or the ``cls/*.mat`` stems, or the PNG stems
    of an already converted SegmentationClassAug folder. Returns (ids, kind)."""
    sbd_root = Path(sbd_root).expanduser()
    if not sbd_root.exists():
        raise FileNotFoundError(
            f"SBD root {sbd_root} does not exist (expected SBD's dataset/ folder with cls/*.mat, "
            "or a SegmentationClassAug/ folder of PNG masks)"
        )
    ds = _sbd_dataset_dir(sbd_root)
    if ds is not None:
        ids: list[str] = []
        lists = [ds / "train.txt", ds / "val.txt"]
        if all(p.is_file() for p in lists):
            for p in lists:
                ids += read_id_list(p)
        else:
            ids = sorted(p.stem for p in (ds / "cls").glob("*.mat"))
        return ids, "mat"
    pngs = sorted(p.stem for p in sbd_root.glob("*.png"))
    if pngs:
        return pngs, "png"
    raise FileNotFoundError(
        f"{sbd_root} is neither SBD (no dataset/cls/*.mat under it) nor a folder of "
        "SegmentationClassAug PNG masks"
    )


def build_train_aug(root, sbd_root=None, write: bool = False) -> list[str]:
    """The 10,582-image ``train_aug`` list: (VOC train ∪ SBD train ∪ SBD val) minus VOC val.

    ``sbd_root`` is SBD's ``benchmark_RELEASE`` (or its ``dataset/``) folder with
    ``cls/*.mat`` and ``train.txt``/``val.txt``, or an already converted
    ``SegmentationClassAug/`` folder; by default ``root/SegmentationClassAug`` when present.
    Order: VOC train ids first, then the SBD ids in their list order, without duplicates.
    ``write=True`` also writes ``ImageSets/Segmentation/train_aug.txt`` (atomically).
    """
    root = resolve_root(root)
    if sbd_root is None:
        if (root / "SegmentationClassAug").is_dir():
            sbd_root = root / "SegmentationClassAug"
        else:
            raise FileNotFoundError(
                f"cannot build train_aug for {root}: no ImageSets/Segmentation/train_aug.txt, no "
                "SegmentationClassAug/ folder, and no sbd_root given (SBD's dataset/cls/*.mat)"
            )
    train = read_id_list(split_list_path(root, "train"))
    val = set(read_id_list(split_list_path(root, "val")))
    sbd, _ = _sbd_ids(sbd_root)
    seen: set[str] = set()
    out = []
    for i in list(train) + list(sbd):
        if i in val or i in seen:
            continue
        seen.add(i)
        out.append(i)
    if write:
        write_id_list(root / "ImageSets" / "Segmentation" / "train_aug.txt", out)
    return out


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
        raise ValueError(f"cannot read SBD mask {path}: {e}") from e
    gt = mat.get("GTcls")
    if gt is None or not hasattr(gt, "Segmentation"):
        raise ValueError(f"{path} has no GTcls.Segmentation field (expected an SBD cls/*.mat file)")
    seg = np.asarray(gt.Segmentation)
    if seg.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected H×W")
    return seg.astype(np.uint8)


def save_mask(path, mask: np.ndarray, palette: Sequence[int] = VOC_PALETTE) -> Path:
    """Save a class-index mask as an 8-bit palette PNG (VOC colours), atomically."""
    path = Path(path)
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError(f"mask for {path} must be H×W with values 0..255, got shape {arr.shape}")
    im = Image.fromarray(arr.astype(np.uint8))
    im.putpalette(list(palette))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def convert_sbd(sbd_root, out_dir, ids: Iterable[str] | None = None, progress: bool = True) -> Path:
    """Write SBD's ``cls/*.mat`` masks as VOC palette PNGs into ``out_dir`` (e.g.
    ``VOC2012/SegmentationClassAug``). Existing PNGs are kept (resumable)."""
    from tqdm.auto import tqdm

    sbd_root = Path(sbd_root).expanduser()
    ds = _sbd_dataset_dir(sbd_root)
    if ds is None:
        raise FileNotFoundError(f"{sbd_root} has no dataset/cls/ folder (expected SBD's benchmark_RELEASE)")
    ids = list(ids) if ids is not None else sorted(p.stem for p in (ds / "cls").glob("*.mat"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(ids, desc="SBD .mat → PNG", disable=not progress):
        dst = out_dir / f"{i}.png"
        if not dst.exists():
            save_mask(dst, read_sbd_mat(ds / "cls" / f"{i}.mat"))
    return out_dir


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
        raise ValueError(f"cannot convert image {path} (mode {img.mode}) to RGB: {e}") from e


def load_rgb(path) -> Image.Image:
    """Open an image file as a fully decoded PIL RGB image. Raises ``FileNotFoundError``
    when absent and ``ValueError`` (naming the path) when it cannot be decoded."""
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
        raise ValueError(f"cannot decode image {path} (corrupt or not an image): {e}") from e


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
            raise ValueError(f"RGB mask {path} has colour {(r, g, b)} that is not in the VOC palette")
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
                    raise ValueError(f"mask {path} has values outside 0..255")
                return arr.astype(np.uint8)
            if im.mode in ("RGB", "RGBA"):
                return _rgb_mask_to_index(np.asarray(im.convert("RGB")), VOC_PALETTE, path)
            raise ValueError(f"mask {path} has mode {im.mode}; expected a palette (P) or grayscale (L) PNG")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode mask {path} (corrupt or not an image): {e}") from e


def load_cls_labels(path, class_names: Sequence[str] = VOC_CLASSES, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Image labels from a file: the authors' ``cls_labels.npy`` (a pickled dict id →
    float32 (K,), REFERENCE.md §6: reading it executes pickle, so ``allow_pickle=True`` must be
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
            raise ValueError(f"label file {path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"label file {path} must hold a JSON object {{id: [labels]}}")
        return {str(k): _labels_to_vector(v, class_names, f"{path}[{k!r}]") for k, v in raw.items()}
    try:
        arr = np.load(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects (the authors' cls_labels.npy is a pickled dict); "
                "pass allow_pickle=True if you trust this file"
            ) from e
        raise ValueError(f"cannot read label file {path}: {e}") from e
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        arr = arr.item()
    if not isinstance(arr, dict):
        raise ValueError(f"{path} must hold a dict id → {K}-dim label vector, got {type(arr).__name__}")
    out = {}
    for k, v in arr.items():
        v = np.asarray(v, np.float32).reshape(-1)
        if v.shape != (K,):
            raise ValueError(f"{path}: labels of {k!r} have shape {v.shape}, expected ({K},)")
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
        raise ValueError(f"{where}: expected a list of class names or indices, got {value!r}")
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
                    raise ValueError(f"{where}: class index {x} out of range 0..{K - 1}")
                vec[x] = 1
            else:
                raise ValueError(f"{where}: unknown class name {key!r}; known: {list(class_names)}")
        elif isinstance(x, (int, np.integer)) or (isinstance(x, float) and float(x).is_integer()):
            x = int(x)
            if not 0 <= x < K:
                raise ValueError(f"{where}: class index {x} out of range 0..{K - 1}")
            vec[x] = 1
        else:
            raise ValueError(f"{where}: cannot read label {x!r} (expected a class name or 0-based index)")
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
        raise ValueError(f"cannot parse annotation {path}: {e}") from e
    index = {n: i for i, n in enumerate(class_names)}
    vec = np.zeros(len(class_names), np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in index:
            vec[index[name]] = 1
    return vec


# --------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------
MODES = ("cls", "seg", "infer")


class _LabelledImages:
    """Shared item logic of :class:`VOCDataset` and :class:`~transcam_nb.data.folder.FolderDataset`.

    Subclasses set ``ids``, ``class_names``, ``mode``, ``transform`` and implement
    ``image_path(i)``, ``mask_path(i)`` (None when there is none) and ``_label_for(i, mask)``.
    """

    ids: list[str]
    class_names: tuple[str, ...]
    mode: str
    transform: Callable | None
    epoch: int | None = None

    # -- public ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes (the label vector length)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Make augmentations a function of (transform seed, epoch, index): call once per
        epoch before iterating (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def label(self, index: int) -> np.ndarray | None:
        """The K-dim label vector of item ``index`` (cached; ``None`` in "infer" mode when the
        image has no label source, e.g. VOC test)."""
        cache = self.__dict__.setdefault("_label_cache", {})
        if index not in cache:
            cache[index] = self._label_or_none(index, None)
        v = cache[index]
        return None if v is None else v.copy()

    def labels(self, progress: bool = False) -> np.ndarray:
        """All label vectors as an (N, K) float32 array."""
        from tqdm.auto import tqdm

        rows = [self.label(i) for i in tqdm(range(len(self)), desc="labels", disable=not progress)]
        if any(r is None for r in rows):
            raise FileNotFoundError("some images have no labels (no label file entry, mask or XML)")
        return np.stack(rows) if rows else np.zeros((0, self.num_classes), np.float32)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        image = load_rgb(self.image_path(index))
        w, h = image.size
        cache = self.__dict__.setdefault("_label_cache", {})
        mp = self.mask_path(index)
        want_mask = (
            self.mode == "seg"
            or (self.mode == "infer" and mp is not None)
            or (index not in cache and mp is not None and self._label_needs_mask(index))
        )
        mask = self._read_mask(index, check_size=(w, h)) if want_mask else None
        if index not in cache:
            cache[index] = self._label_or_none(index, mask)
        label = None if cache[index] is None else cache[index].copy()
        iid = self.ids[index]

        if self.mode == "cls":
            if self.transform is None:
                return Sample(image=image, label=label, id=iid, orig_size=(h, w))
            import torch

            return self._call_transform(index, image), torch.from_numpy(label)
        if self.mode == "seg":
            if self.transform is None:
                return Sample(image=image, label=label, id=iid, orig_size=(h, w), mask=mask)
            return self._call_transform(index, image, mask)
        # infer
        img = np.asarray(image, dtype=np.uint8)
        if self.transform is not None:
            img = self._call_transform(index, image)
        return Sample(image=img, label=label, id=iid, orig_size=(h, w), mask=mask)

    # -- helpers -----------------------------------------------------------------------
    def _label_or_none(self, index: int, mask):
        try:
            return self._label_for(index, mask)
        except FileNotFoundError:
            if self.mode == "infer":
                return None
            raise

    def _call_transform(self, index: int, image, mask=None):
        """``transform(image[, mask][, rng=...])``; the mask is passed as a uint8 array."""
        t = self.transform
        kwargs = {}
        if self.epoch is not None and hasattr(t, "rng_for"):
            kwargs["rng"] = t.rng_for(index, self.epoch)
        return t(image, **kwargs) if mask is None else t(image, mask, **kwargs)

    def _read_mask(self, index: int, check_size) -> np.ndarray:
        mp = self.mask_path(index)
        if mp is None:
            raise FileNotFoundError(self._missing_mask_message(index))
        mask = load_mask(mp)
        if check_size is not None and (mask.shape[1], mask.shape[0]) != tuple(check_size):
            raise ValueError(
                f"mask {mp} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{self.image_path(index)} is {check_size[0]}x{check_size[1]}; they must be the same size"
            )
        return mask

    def _missing_mask_message(self, index: int) -> str:
        return f"no mask for image {self.ids[index]!r}"

    def _label_needs_mask(self, index: int) -> bool:
        return True

    def image_path(self, index: int) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask_path(self, index: int) -> Path | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _label_for(self, index: int, mask: np.ndarray | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class VOCDataset(_LabelledImages):
    """A split of a VOC-layout dataset (real VOC 2012 or the embedded benchmark).

    Parameters
    ----------
    root : folder holding ``JPEGImages/`` (or a parent with ``VOCdevkit/VOC2012``).
    split : list name under ``ImageSets/Segmentation`` (``train``, ``val``, ``test``,
        ``train_aug``, ...), or a path to a list file. ``train_aug`` falls back to
        :func:`build_train_aug` (from ``sbd_root`` or ``root/SegmentationClassAug``).
    mode : ``"cls"``, ``"seg"`` or ``"infer"`` (see the module docstring for items).
    transform : callable applied to the PIL image ("cls", "infer") or to (image, mask) ("seg").
    mask_dir : ``"auto"`` (``SegmentationClass``, then ``SegmentationClassAug``, then the SBD
        ``.mat``), or a folder name under ``root`` / an absolute folder to use only.
    sbd_root : SBD ``benchmark_RELEASE`` (or ``dataset``) folder, for train_aug and SBD masks.
    cls_labels : optional label file (``cls_labels.npy`` or JSON), see :func:`load_cls_labels`.
    label_source : ``"auto"`` (file, then mask, then XML), ``"mask"``, ``"file"`` or ``"xml"``.
    class_names : override the names (default: ``root/classes.txt``, else VOC's 20).
    allow_pickle : needed to read the authors' pickled ``cls_labels.npy``.
    check_files : verify at construction that every listed image (and, in "seg" mode, mask)
        exists, so a missing file is reported before training starts.
    """

    def __init__(
        self,
        root,
        split: str = "train",
        mode: str = "cls",
        transform: Callable | None = None,
        *,
        mask_dir: str | os.PathLike = "auto",
        sbd_root=None,
        cls_labels=None,
        label_source: str = "auto",
        class_names: Sequence[str] | None = None,
        allow_pickle: bool = False,
        check_files: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if label_source not in ("auto", "mask", "file", "xml"):
            raise ValueError(f"label_source must be 'auto', 'mask', 'file' or 'xml', got {label_source!r}")
        self.root = resolve_root(root)
        self.split = str(split)
        self.mode = mode
        self.transform = transform
        self.label_source = label_source
        self.class_names = tuple(class_names) if class_names is not None else read_class_names(self.root)
        self.sbd_root = Path(sbd_root).expanduser() if sbd_root is not None else None
        self._sbd_ds = _sbd_dataset_dir(self.sbd_root) if self.sbd_root is not None and self.sbd_root.exists() else None
        if self.sbd_root is not None and not self.sbd_root.exists():
            raise FileNotFoundError(f"SBD root {self.sbd_root} does not exist")

        # ids
        split_path = Path(split)
        if split_path.suffix == ".txt" and split_path.is_file():
            self.list_path = split_path
            self.ids = read_id_list(split_path)
        else:
            try:
                self.list_path = split_list_path(self.root, self.split)
                self.ids = read_id_list(self.list_path)
            except FileNotFoundError:
                if self.split not in ("train_aug", "trainaug"):
                    raise
                self.list_path = None
                self.ids = build_train_aug(self.root, self.sbd_root)

        # mask folders
        if str(mask_dir) == "auto":
            self.mask_dirs = [self.root / "SegmentationClass", self.root / "SegmentationClassAug"]
            if self.sbd_root is not None and self._sbd_ds is None:
                self.mask_dirs.append(self.sbd_root)  # a converted SegmentationClassAug folder
        else:
            md = Path(mask_dir)
            md = md if md.is_absolute() else self.root / md
            if not md.is_dir():
                raise FileNotFoundError(f"mask folder {md} does not exist")
            self.mask_dirs = [md]
        self._mask_auto = str(mask_dir) == "auto"
        self._mask_dirs_present = [d for d in self.mask_dirs if d.is_dir()]

        # labels from a file
        self.cls_labels = None
        if cls_labels is not None:
            self.cls_labels = load_cls_labels(cls_labels, self.class_names, allow_pickle=allow_pickle)
        elif label_source == "file":
            raise ValueError("label_source='file' needs a cls_labels= path")

        if check_files:
            self._check_files()

    # -- paths -------------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path | None:
        iid = self.ids[index]
        for d in self._mask_dirs_present:
            p = d / f"{iid}.png"
            if p.is_file():
                return p
        if self._mask_auto and self._sbd_ds is not None:
            p = self._sbd_ds / "cls" / f"{iid}.mat"
            if p.is_file():
                return p
        return None

    def _missing_mask_message(self, index: int) -> str:
        where = ", ".join(str(d / f"{self.ids[index]}.png") for d in self.mask_dirs)
        if self._mask_auto and self._sbd_ds is not None:
            where += f", {self._sbd_ds / 'cls' / (self.ids[index] + '.mat')}"
        return f"mask for image {self.ids[index]!r} does not exist (looked for {where})"

    def _has_label_source(self, index: int) -> bool:
        iid = self.ids[index]
        if self.cls_labels is not None and iid in self.cls_labels and self.label_source in ("auto", "file"):
            return True
        if self.label_source in ("auto", "mask") and self.mask_path(index) is not None:
            return True
        return self.label_source in ("auto", "xml") and (self.root / "Annotations" / f"{iid}.xml").is_file()

    def _check_files(self) -> None:
        missing = [str(self.image_path(i)) for i in range(len(self)) if not self.image_path(i).is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {self.list_path or 'train_aug'} do not exist: "
                f"{', '.join(missing[:3])}{more}"
            )
        for i in range(len(self)):
            if self.mode == "seg" and self.mask_path(i) is None:
                raise FileNotFoundError(self._missing_mask_message(i))
            if self.mode == "cls" and not self._has_label_source(i):
                iid = self.ids[i]
                raise FileNotFoundError(
                    f"no labels for image {iid!r}: {self._missing_mask_message(i)}, no annotation "
                    f"{self.root / 'Annotations' / (iid + '.xml')}, and no label file entry"
                )

    # -- labels ------------------------------------------------------------------------
    def _label_needs_mask(self, index: int) -> bool:
        if self.label_source == "mask":
            return True
        if self.label_source in ("file", "xml"):
            return False
        return not (self.cls_labels is not None and self.ids[index] in self.cls_labels)

    def _label_for(self, index: int, mask: np.ndarray | None) -> np.ndarray:
        iid = self.ids[index]
        src = self.label_source
        if src in ("auto", "file") and self.cls_labels is not None and iid in self.cls_labels:
            return self.cls_labels[iid].copy()
        if src == "file":
            raise KeyError(f"image {iid!r} has no entry in the label file")
        if src in ("auto", "mask"):
            if mask is None and self.mask_path(index) is not None:
                mask = self._read_mask(index, check_size=None)
            if mask is not None:
                try:
                    return image_labels(mask, self.num_classes)
                except ValueError as e:
                    raise ValueError(f"mask {self.mask_path(index)}: {e}") from None
            if src == "mask":
                raise FileNotFoundError(self._missing_mask_message(index))
        xml = self.root / "Annotations" / f"{iid}.xml"
        if src == "xml" or xml.is_file():
            return xml_labels(xml, self.class_names)
        raise FileNotFoundError(
            f"no labels for image {iid!r}: no entry in a label file, no mask "
            f"({self._missing_mask_message(index)}), and no annotation {xml}"
        )

    def __repr__(self) -> str:
        return (
            f"VOCDataset(root={str(self.root)!r}, split={self.split!r}, mode={self.mode!r}, "
            f"n={len(self)}, num_classes={self.num_classes})"
        )
