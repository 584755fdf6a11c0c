"""Users' own data: a folder of images plus a CSV or JSON file of image-level labels.

Same item interface as :class:`~transcam_nb.data.voc.VOCDataset` (modes ``"cls"``, ``"seg"``,
``"infer"``; :class:`~transcam_nb.data.voc.Sample` items; ``class_names``, ``num_classes``,
``set_epoch``), so every stage that reads VOC can read a folder.

Label files
-----------
CSV (``.csv``), with a header row. The image column is the one named ``image``, ``id``,
``filename``, ``file``, ``image_id`` or ``name`` (else the first column); it holds a file name
(``cat1.jpg``), a relative path (``sub/cat1.jpg``) or a stem (``cat1``). Then either

* a ``labels`` column (also ``label``, ``classes``, ``tags``) of class names or 0-based
  indices separated by spaces, semicolons, commas or ``|`` (empty = no foreground class), or
* one 0/1 column per class, the header giving the class names, in class order.

JSON (``.json``): ``{image: [class names or 0-based indices]}``, or
``{"class_names": [...], "labels": {image: [...]}}``.

Class names: ``class_names=`` when given (this fixes the order); else the per-class column
headers, the JSON ``class_names``, or ``image_dir/../classes.txt`` / ``image_dir/classes.txt``
when present; else the sorted set of names used in the file. Index labels need names from
one of those sources.

Masks (optional, needed for ``"seg"``): ``mask_dir/<stem>.png`` with 0 = background,
1..K = classes (class k ↔ value k+1), 255 = ignore; palette, grayscale or VOC-coloured RGB PNGs.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from .voc import IMAGE_EXTENSIONS, MODES, _labels_to_vector, _LabelledImages, image_labels

__all__ = ["FolderDataset", "read_label_file"]

_ID_COLUMNS = ("image", "id", "filename", "file", "image_id", "name", "path")
_LABEL_COLUMNS = ("labels", "label", "classes", "tags")


def read_label_file(path, class_names: Sequence[str] | None = None) -> tuple[list[str], tuple[str, ...], dict]:
    """Parse a CSV/JSON label file. Returns (image keys in file order, class names,
    key → float32 (K,) label vector). Raises :class:`~transcam_nb.errors.InputError` naming the file and row on
    malformed content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist (expected a .csv or .json of image labels)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"label file {path} is not valid JSON: {e}") from e
        if isinstance(raw, dict) and "labels" in raw and isinstance(raw["labels"], dict):
            if class_names is None and raw.get("class_names") is not None:
                class_names = [str(c) for c in raw["class_names"]]
            raw = raw["labels"]
        if not isinstance(raw, dict):
            raise InputError(f"label file {path} must hold a JSON object {{image: [labels]}}")
        keys = [str(k) for k in raw]
        entries = {str(k): v for k, v in raw.items()}
        for k, v in entries.items():
            if isinstance(v, str):
                entries[k] = v
            elif not isinstance(v, (list, tuple)):
                raise InputError(f"{path}: labels of {k!r} must be a list of class names or indices, got {v!r}")
        if class_names is None:
            class_names = _names_from_values(entries.values(), path)
        names = tuple(class_names)
        return keys, names, {k: _labels_to_vector(v, names, f"{path}[{k!r}]") for k, v in entries.items()}
    if suffix not in (".csv", ".tsv", ".txt"):
        raise InputError(f"label file {path} must be .csv or .json, got {path.suffix!r}")
    with open(path, newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        delim = "\t" if suffix == ".tsv" or ("\t" in sample and "," not in sample) else ","
        rows = [r for r in csv.reader(f, delimiter=delim) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"label file {path} is empty (expected a header row and one row per image)")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    id_col = next((lower.index(c) for c in _ID_COLUMNS if c in lower), 0)
    label_col = next((lower.index(c) for c in _LABEL_COLUMNS if c in lower), None)
    keys, entries = [], {}
    if label_col is not None:
        for n, r in enumerate(rows[1:], start=2):
            if len(r) <= id_col:
                raise InputError(f"{path}, line {n}: no image column")
            key = r[id_col].strip()
            keys.append(key)
            entries[key] = r[label_col].strip() if len(r) > label_col else ""
        if class_names is None:
            class_names = _names_from_values(entries.values(), path)
        names = tuple(class_names)
        return keys, names, {k: _labels_to_vector(v, names, f"{path}, image {k!r}") for k, v in entries.items()}
    # one 0/1 column per class
    cls_cols = [i for i in range(len(header)) if i != id_col]
    if not cls_cols:
        raise InputError(
            f"{path}: header {header} has no 'labels' column and no per-class 0/1 columns "
            "(expected e.g. 'image,labels' or 'image,cat,dog,...')"
        )
    file_names = tuple(header[i] for i in cls_cols)
    if class_names is not None and tuple(class_names) != file_names:
        missing = set(class_names) - set(file_names)
        if missing:
            raise InputError(f"{path}: class columns {list(file_names)} lack {sorted(missing)}")
    names = tuple(class_names) if class_names is not None else file_names
    col_of = {header[i]: i for i in cls_cols}
    out = {}
    for n, r in enumerate(rows[1:], start=2):
        key = r[id_col].strip()
        keys.append(key)
        vec = np.zeros(len(names), np.float32)
        for j, name in enumerate(names):
            i = col_of[name]
            cell = r[i].strip() if i < len(r) else ""
            if cell in ("1", "1.0", "true", "True", "yes"):
                vec[j] = 1
            elif cell not in ("0", "0.0", "", "false", "False", "no", "-1"):
                raise InputError(f"{path}, line {n}, column {name!r}: expected 0 or 1, got {cell!r}")
        out[key] = vec
    return keys, names, out


def _names_from_values(values, path) -> tuple[str, ...]:
    names = set()
    for v in values:
        toks = v.replace(";", " ").replace(",", " ").replace("|", " ").split() if isinstance(v, str) else v
        for t in toks:
            if isinstance(t, str) and not t.strip().lstrip("-").isdigit():
                names.add(t.strip())
            elif not isinstance(t, str) or t.strip():
                raise InputError(
                    f"{path} uses class indices ({t!r}); pass class_names= (or put them in the file) "
                    "so indices can be mapped to names"
                )
    if not names:
        raise InputError(f"{path} names no classes; pass class_names=")
    return tuple(sorted(names))


class FolderDataset(_LabelledImages):
    """Images in a folder with image-level labels from a CSV/JSON file, masks optional.

    Parameters: ``image_dir`` (images; sub-folders allowed when the label file names relative
    paths), ``labels_file`` (see the module docstring), ``mask_dir`` (optional PNG masks named
    by image stem), ``class_names`` (fixes the class order), ``mode`` ("cls", "seg", "infer"),
    ``transform`` (as for VOCDataset), ``label_source`` ("file": labels from the file, the
    default; "mask": derived from the masks; the file is then optional).
    """

    def __init__(
        self,
        image_dir,
        labels_file=None,
        mask_dir=None,
        class_names: Sequence[str] | None = None,
        mode: str = "cls",
        transform: Callable | None = None,
        *,
        label_source: str = "file",
    ):
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if label_source not in ("file", "mask"):
            raise InputError(f"label_source must be 'file' or 'mask', got {label_source!r}")
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} does not exist")
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir is not None else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(f"mask folder {self.mask_dir} does not exist")
        if mode == "seg" and self.mask_dir is None:
            raise InputError("mode='seg' needs mask_dir= (a folder of PNG masks named by image stem)")
        self.mode = mode
        self.transform = transform
        self.label_source = label_source

        if class_names is None:
            for cand in (self.image_dir / "classes.txt", self.image_dir.parent / "classes.txt"):
                if cand.is_file():
                    class_names = [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
                    break

        index = self._index_images()
        if labels_file is not None:
            keys, names, table = read_label_file(labels_file, class_names)
            self.labels_file = Path(labels_file)
        else:
            if label_source != "mask":
                raise InputError("labels_file is required unless label_source='mask'")
            if class_names is None:
                raise InputError("label_source='mask' without a labels file needs class_names=")
            keys, names, table = sorted(index["rel"]), tuple(class_names), {}
            self.labels_file = None
        self.class_names = tuple(names)
        self._paths, self.ids, self._table = [], [], {}
        missing = []
        for key in keys:
            p = self._find(key, index)
            if p is None:
                missing.append(key)
                continue
            iid = p.stem
            self._paths.append(p)
            self.ids.append(iid)
            if key in table:
                self._table[len(self.ids) - 1] = table[key]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{len(missing)} image(s) named in {labels_file} are not in {self.image_dir}: "
                f"{', '.join(missing[:3])}{more} (looked for these names and stems with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        seen: dict[str, Path] = {}
        for iid, p in zip(self.ids, self._paths):
            if iid in seen and seen[iid] != p:
                raise InputError(f"two images share the id {iid!r}: {seen[iid]} and {p} (ids are file stems)")
            seen[iid] = p
        if self.mode == "seg" or label_source == "mask":
            for i in range(len(self)):
                if self.mask_path(i) is None:
                    raise FileNotFoundError(self._missing_mask_message(i))

    # -- files -----------------------------------------------------------------------------
    def _index_images(self) -> dict:
        by_rel, by_stem = {}, {}
        for dirpath, _dirs, files in os.walk(self.image_dir):
            for fn in files:
                if Path(fn).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                p = Path(dirpath) / fn
                rel = p.relative_to(self.image_dir).as_posix()
                by_rel[rel] = p
                by_stem.setdefault(Path(fn).stem, p)
                by_stem.setdefault(str(Path(rel).with_suffix("")), p)
        return {"rel": by_rel, "stem": by_stem}

    def _find(self, key: str, index: dict):
        k = key.strip().replace("\\", "/")
        if k.startswith("./"):
            k = k[2:]
        return index["rel"].get(k) or index["stem"].get(k) or index["stem"].get(str(Path(k).with_suffix("")))

    def image_path(self, index: int) -> Path:
        return self._paths[index]

    def mask_path(self, index: int):
        if self.mask_dir is None:
            return None
        p = self.mask_dir / f"{self.ids[index]}.png"
        return p if p.is_file() else None

    def _missing_mask_message(self, index: int) -> str:
        return f"mask {self.mask_dir / (self.ids[index] + '.png')} for image {self._paths[index]} does not exist"

    # -- labels ----------------------------------------------------------------------------
    def _label_needs_mask(self, index: int) -> bool:
        return self.label_source == "mask"

    def _label_for(self, index: int, mask):
        if self.label_source == "file":
            if index not in self._table:
                raise FileNotFoundError(f"image {self.ids[index]!r} has no labels in {self.labels_file}")
            return self._table[index].copy()
        if mask is None:
            from .voc import load_mask

            mp = self.mask_path(index)
            if mp is None:
                raise FileNotFoundError(self._missing_mask_message(index))
            mask = load_mask(mp)
        try:
            return image_labels(mask, self.num_classes)
        except ValueError as e:
            raise InputError(f"mask {self.mask_path(index)}: {e}") from None

    def __repr__(self) -> str:
        return (
            f"FolderDataset(image_dir={str(self.image_dir)!r}, mode={self.mode!r}, n={len(self)}, "
            f"num_classes={self.num_classes})"
        )
