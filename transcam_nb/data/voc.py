"""PASCAL VOC 2012 (+ SBD) in the standard devkit layout: lists, labels, masks, datasets.

Every stage of the pipeline reads data through this module. Real users point it at VOC 2012
(optionally augmented with SBD); the book and CI point it at the embedded benchmark
(:mod:`transcam_nb.data.synthetic`), which is written in the same layout.

Layout (docs/reference.md §6). ``root`` is the folder that holds ``JPEGImages/`` (for VOC that is
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
image or mask; :class:`~transcam_nb.errors.InputError` (a ``ValueError``) for a corrupt image,
a mask whose size differs from its image, mask values outside {0..K, 255}, malformed label files.

Code layout: this module holds the datasets (:class:`Sample`, :class:`VOCDataset` and the
item logic that :class:`~transcam_nb.data.folder.FolderDataset` shares). The one-file readers
and writers (palette, id lists, images, masks, label files) live in
:mod:`transcam_nb.data.devkit`, the SBD folder logic (``train_aug``, ``.mat`` conversion) in
:mod:`transcam_nb.data.sbd`; both are re-exported here, so every name above imports from
``transcam_nb.data.voc`` as it always did.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from .devkit import (  # re-exported: the one-file readers and writers live in devkit
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    VOC_CLASSES,
    VOC_PALETTE,
    _labels_to_vector,  # noqa: F401  (used by data.folder)
    image_labels,
    load_cls_labels,
    load_mask,
    load_rgb,
    read_class_names,
    read_id_list,
    read_sbd_mat,
    resolve_root,
    save_mask,
    split_list_path,
    voc_palette,
    write_id_list,
    xml_labels,
)
from .sbd import _sbd_dataset_dir, build_train_aug, convert_sbd

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

    def mask(self, index: int) -> np.ndarray:
        """The uint8 H×W class mask of item ``index`` (0 bg, 1..K, 255 ignore); ``FileNotFoundError``
        naming where it was looked for when the image has none."""
        return self._read_mask(index, check_size=None)

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
            raise InputError(
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
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if label_source not in ("auto", "mask", "file", "xml"):
            raise InputError(f"label_source must be 'auto', 'mask', 'file' or 'xml', got {label_source!r}")
        self.root = resolve_root(root)
        self.image_dir = self.root / "JPEGImages"  # <id>.jpg
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
            raise InputError("label_source='file' needs a cls_labels= path")

        if check_files:
            self._check_files()

    # -- paths -------------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.jpg"

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
                    raise InputError(f"mask {self.mask_path(index)}: {e}") from None
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
