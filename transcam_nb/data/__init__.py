"""Data: PASCAL VOC 2012 (+SBD), MS COCO (instances JSON), the embedded synthetic benchmark,
users' own folders, and the paper's augmentations. All datasets share one item interface (see :mod:`.voc`)."""
from .voc import (  # noqa: F401
    IGNORE_INDEX,
    VOC_CLASSES,
    VOC_PALETTE,
    Sample,
    VOCDataset,
    build_train_aug,
    collate_list,
    image_labels,
    load_mask,
    load_rgb,
    save_mask,
    voc_palette,
)
from .folder import FolderDataset  # noqa: F401
from .coco import COCO_CLASSES, COCODataset  # noqa: F401
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform, normalize, denormalize, worker_init_fn  # noqa: F401
from . import synthetic  # noqa: F401

__all__ = [
    "IGNORE_INDEX", "VOC_CLASSES", "VOC_PALETTE", "Sample", "VOCDataset", "FolderDataset", "COCODataset",
    "COCO_CLASSES",
    "build_train_aug", "collate_list", "image_labels", "load_mask", "load_rgb", "save_mask",
    "voc_palette", "IMAGENET_MEAN", "IMAGENET_STD", "TrainTransform", "normalize", "denormalize",
    "worker_init_fn", "synthetic",
]
