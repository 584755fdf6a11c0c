"""Where a profile's data live, and the datasets built from them.

``profile.dataset`` says which reader a profile uses (:data:`DATASETS`): ``"voc"``
(:class:`~transcam_nb.data.voc.VOCDataset`: real VOC 2012 or the embedded synthetic benchmark) or
``"coco"`` (:class:`~transcam_nb.data.coco.COCODataset`: MS COCO 2014 / 2017 instances JSON).
Every stage gets its data here, so a stage is written once for both.

:func:`resolve_data_root` is the dataset folder (the given folder, or the embedded synthetic
benchmark generated on first use); :func:`build_dataset` a split in a mode (``"cls"``, ``"seg"``,
``"infer"``); :func:`build_train_dataset` the training split with the paper's augmentation;
:func:`build_eval_dataset` a split for classification evaluation with :class:`EvalTransform`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import InputError

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Profile

__all__ = ["DATASETS", "resolve_data_root", "build_dataset", "build_train_dataset", "build_eval_dataset",
           "EvalTransform"]

#: ``profile.dataset`` → what its root folder holds (for the messages about a missing or wrong root)
DATASETS = {
    "voc": "the VOC 2012 folder (--data-root VOCdevkit/VOC2012, $TRANSCAM_VOC_ROOT or data_root=...), "
           "the folder that holds JPEGImages/",
    "coco": "the MS COCO folder (--data-root DIR, $TRANSCAM_COCO_ROOT or data_root=...) holding "
            "annotations/instances_train2014.json, instances_val2014.json (or the 2017 names) and the image "
            "folders train2014/, val2014/",
}


def _dataset_kind(profile: Profile) -> str:
    if profile.dataset not in DATASETS:
        raise InputError(f"profile {profile.name!r}: dataset={profile.dataset!r} is not one of {sorted(DATASETS)}")
    return profile.dataset


def resolve_data_root(profile: Profile, data_root=None, *, progress: bool = True) -> Path:
    """The dataset folder: ``data_root``, else ``profile.data_root``, else the embedded benchmark
    (generated on first use by :func:`transcam_nb.data.synthetic.ensure`) when the profile has
    ``synthetic`` parameters. The paper profile needs a VOC path, the coco profile a COCO path
    (checked here: a folder with ``annotations/instances_*.json``; :class:`InputError` otherwise)."""
    kind = _dataset_kind(profile)
    root = data_root if data_root is not None else profile.data_root
    if root is not None:
        root = Path(root).expanduser()
        if kind == "coco":
            ann = root / "annotations"
            if not any(ann.glob("instances_*.json")) and not any(root.glob("instances_*.json")):
                what = "does not exist" if not root.is_dir() else f"has no {ann.name}/instances_*.json"
                raise InputError(f"COCO root {root} {what}: expected {DATASETS['coco']}")
        return root
    if profile.synthetic is None:
        raise InputError(f"profile {profile.name!r} has no data_root: give {DATASETS[kind]}")
    from . import synthetic

    params = dict(profile.synthetic)
    params.setdefault("num_classes", profile.num_fg)
    seed = params.pop("seed", 0)
    return synthetic.ensure(seed=seed, progress=progress, **params)


def build_dataset(profile: Profile, split: str, mode: str = "infer", *, data_root=None,
                  transform: Callable | None = None, check_files: bool = True, sbd_root=None, cls_labels=None,
                  allow_pickle: bool = False, progress: bool = True):
    """``split`` of the profile's dataset in ``mode`` (the items of
    :class:`~transcam_nb.data.voc.VOCDataset`): a ``VOCDataset`` (with the profile's ``sbd_root``,
    ``cls_labels`` and ``label_source`` unless given) or a
    :class:`~transcam_nb.data.coco.COCODataset` (split ``train2014``, ``val2014``, ``train2017``, ...;
    labels from the annotations)."""
    root = resolve_data_root(profile, data_root, progress=progress)
    if _dataset_kind(profile) == "coco":
        from .coco import COCODataset

        return COCODataset(root, split, mode=mode, transform=transform, check_files=check_files)
    from .voc import VOCDataset

    return VOCDataset(root, split, mode=mode, transform=transform,
                      sbd_root=sbd_root if sbd_root is not None else profile.sbd_root,
                      cls_labels=cls_labels if cls_labels is not None else profile.cls_labels,
                      label_source=profile.label_source, allow_pickle=allow_pickle, check_files=check_files)


def build_train_dataset(profile: Profile, data_root=None, *, sbd_root=None, cls_labels=None,
                        allow_pickle: bool = False, progress: bool = True):
    """The profile's training split (``train_split``) in "cls" mode with the paper's augmentation
    (``resize_long``, flip, ``jitter``, ImageNet normalisation, ``crop_size`` crop), seeded from
    ``profile.seed``. Items are ``(image [3, crop, crop], labels [K])``."""
    from .transforms import TrainTransform

    t = TrainTransform(resize_long=tuple(profile.resize_long) if profile.resize_long else None,
                       crop=int(profile.crop_size), flip=True,
                       jitter=tuple(profile.jitter) if profile.jitter else None, seed=int(profile.seed))
    ds = build_dataset(profile, profile.train_split, "cls", data_root=data_root, transform=t, sbd_root=sbd_root,
                       cls_labels=cls_labels, allow_pickle=allow_pickle, progress=progress)
    if ds.num_classes != profile.num_fg:
        raise InputError(f"the dataset at {ds.root} has {ds.num_classes} classes but profile {profile.name!r} "
                         f"says num_fg={profile.num_fg}; pass --set num_fg={ds.num_classes}")
    return ds


class EvalTransform:
    """Inference preprocessing for classification: a square bicubic resize to ``size`` (as the
    authors' CAM inference resizes to squares) and ImageNet normalisation → float32 [3, s, s]."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image, **_):
        from PIL import Image

        from .transforms import normalize

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, np.uint8))
        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(normalize(image))


def build_eval_dataset(profile: Profile, data_root=None, split: str | None = None, *, size: int | None = None,
                       cls_labels=None, allow_pickle: bool = False, progress: bool = True):
    """``split`` (default ``profile.val_split``) in "cls" mode with :class:`EvalTransform`
    at ``size`` (default ``profile.crop_size``)."""
    return build_dataset(profile, split or profile.val_split, "cls", data_root=data_root,
                         transform=EvalTransform(size or profile.crop_size), cls_labels=cls_labels,
                         allow_pickle=allow_pickle, progress=progress)
