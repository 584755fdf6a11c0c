"""Where a profile's data live, and the classification datasets built from them.

:func:`resolve_data_root` is the dataset folder (the given VOC folder, or the embedded synthetic
benchmark generated on first use); :func:`build_train_dataset` is the training split with the
paper's augmentation; :func:`build_eval_dataset` a split for classification evaluation with
:class:`EvalTransform`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Profile

__all__ = ["resolve_data_root", "build_train_dataset", "build_eval_dataset", "EvalTransform"]


def resolve_data_root(profile: Profile, data_root=None, *, progress: bool = True) -> Path:
    """The dataset folder: ``data_root``, else ``profile.data_root``, else the embedded benchmark
    (generated on first use by :func:`transcam_nb.data.synthetic.ensure`) when the profile has
    ``synthetic`` parameters. The paper profile needs a VOC path."""
    root = data_root if data_root is not None else profile.data_root
    if root is not None:
        return Path(root).expanduser()
    if profile.synthetic is None:
        raise InputError(
            f"profile {profile.name!r} has no data_root: give the VOC 2012 folder (--data-root "
            "VOCdevkit/VOC2012, or data_root=...), the folder that holds JPEGImages/")
    from . import synthetic

    params = dict(profile.synthetic)
    params.setdefault("num_classes", profile.num_fg)
    seed = params.pop("seed", 0)
    return synthetic.ensure(seed=seed, progress=progress, **params)


def build_train_dataset(profile: Profile, data_root=None, *, sbd_root=None, cls_labels=None,
                        allow_pickle: bool = False, progress: bool = True):
    """The profile's training split (``train_split``) in "cls" mode with the paper's augmentation
    (``resize_long``, flip, ``jitter``, ImageNet normalisation, ``crop_size`` crop), seeded from
    ``profile.seed``. Items are ``(image [3, crop, crop], labels [K])``."""
    from .transforms import TrainTransform
    from .voc import VOCDataset

    root = resolve_data_root(profile, data_root, progress=progress)
    t = TrainTransform(resize_long=tuple(profile.resize_long) if profile.resize_long else None,
                       crop=int(profile.crop_size), flip=True,
                       jitter=tuple(profile.jitter) if profile.jitter else None, seed=int(profile.seed))
    ds = VOCDataset(root, profile.train_split, mode="cls", transform=t,
                    sbd_root=sbd_root if sbd_root is not None else profile.sbd_root,
                    cls_labels=cls_labels if cls_labels is not None else profile.cls_labels,
                    label_source=profile.label_source, allow_pickle=allow_pickle)
    if ds.num_classes != profile.num_fg:
        raise InputError(f"the dataset at {root} has {ds.num_classes} classes but profile {profile.name!r} "
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
    from .voc import VOCDataset

    root = resolve_data_root(profile, data_root, progress=progress)
    return VOCDataset(root, split or profile.val_split, mode="cls",
                      transform=EvalTransform(size or profile.crop_size),
                      cls_labels=cls_labels if cls_labels is not None else profile.cls_labels,
                      label_source=profile.label_source, allow_pickle=allow_pickle)
