"""DeepLab inference: multi-scale + flip prediction, optional dense CRF, evaluation on VOC val,
and test-set PNG export for the PASCAL VOC evaluation server (docs/reference.md §8).

The reference test (``test_deeplab.py``) runs the image at scales
``0.5, 0.75, 1.0, 1.25, 1.5, 1.75``, each also horizontally flipped (12 passes), upsamples every
logit map to the image size (bilinear, ``align_corners=True``), undoes the flips, **averages
the logits, then applies softmax**, refines the probabilities with a 1-iteration dense CRF
(docs/reference.md §7.3, "DeepLab test" row) and takes the argmax. :func:`predict` does exactly that;
the CRF comes from :mod:`transcam_nb.postprocess.crf` (preset ``"deeplab"``).

The metric is the dataset-level confusion count of docs/reference.md §5
(:class:`transcam_nb.metrics.ConfusionMatrix`): IoU_c = TP / (T + P − TP), mIoU over the 21
classes including background, GT 255 ignored.

Test-set submissions: the VOC devkit's ``VOCinit.m`` looks for segmentation results in
``results/VOC2012/Segmentation/<comp>_<testset>_cls/<id>.png``, one PNG per test image with
the class index as the pixel value (0 = background, 1..20 = classes), in the same indexed
(palette) format as ``SegmentationClass``. ``comp5`` is the competition for methods trained on
VOC data only, ``comp6`` for methods that use outside data (ImageNet pre-training counts), so
``comp6`` is the default. :func:`export_voc_test` writes one such file,
:func:`predict_voc_test` a whole split and :func:`make_submission_archive` the ``.tar.gz`` to
upload.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..artifacts import atomic_path, write_json
from ..config import TEST_SCALES
from ..data.transforms import normalize
from ..data.voc import load_mask, load_rgb, read_id_list, resolve_root
from ..data.voc import voc_palette as _flat_voc_palette
from ..pseudo import save_label_png

__all__ = [
    "TEST_SCALES",
    "voc_palette",
    "read_label",
    "predict",
    "predict_logits",
    "evaluate_segmentation",
    "voc_results_dir",
    "export_voc_test",
    "predict_voc_test",
    "make_submission_archive",
]

#: the reference's test scales (docs/reference.md §8)


# ----------------------------------------------------------------------------- small I/O
# Reading and writing go through the package's one implementation of each: images
# :func:`transcam_nb.data.voc.load_rgb`, masks :func:`transcam_nb.data.voc.load_mask`, id lists
# :func:`transcam_nb.data.voc.read_id_list`, the devkit root :func:`transcam_nb.data.voc.resolve_root`,
# label PNGs :func:`transcam_nb.pseudo.save_label_png`, ImageNet normalisation
# :func:`transcam_nb.data.transforms.normalize`, atomic writes :mod:`transcam_nb.artifacts`.
def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as an ``[n, 3]`` uint8 array (index 0 black, 1 dark red, …,
    255 the light "void" colour): :func:`transcam_nb.data.voc.voc_palette` (a flat list)
    reshaped to one row per index, the form ``palette[label]`` colouring needs."""
    return np.asarray(_flat_voc_palette(n), dtype=np.uint8).reshape(n, 3)


def _read_rgb(path) -> np.ndarray:
    """An RGB image as a writable ``[H, W, 3]`` uint8 array (:func:`~transcam_nb.data.voc.load_rgb`)."""
    return np.array(load_rgb(path), dtype=np.uint8)


def read_label(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """A label PNG as ``[H, W]`` uint8 class indices (255 = ignore), read by
    :func:`transcam_nb.data.voc.load_mask` (indexed and single-channel PNGs hold the index
    directly; an RGB PNG is mapped back through the VOC palette, an unknown colour raises a
    ``ValueError`` naming the file).

    With ``num_classes``, a value ``>= num_classes`` other than 255 raises a ``ValueError``
    naming the file.
    """
    lab = load_mask(path)
    if num_classes is not None:
        bad = (lab >= num_classes) & (lab != 255)
        if bad.any():
            raise ValueError(
                f"label {str(path)!r} holds values {np.unique(lab[bad])[:10].tolist()} that are neither "
                f"a class index < {num_classes} nor the ignore value 255"
            )
    return lab


# ----------------------------------------------------------------------------- prediction
def _scaled_size(n: int, s: float, divisor: int) -> int:
    m = max(1, int(round(n * s)))
    if divisor > 1:
        m = max(divisor, int(round(m / divisor)) * divisor)
    return m


def _crf_refine(image: np.ndarray, probs: np.ndarray, crf) -> np.ndarray:
    preset = "deeplab" if crf is True else str(crf)
    try:
        from ..postprocess.crf import crf_probs
    except ImportError as e:
        raise ImportError(
            "crf=... needs transcam_nb.postprocess.crf (and its pydensecrf dependency); "
            f"it could not be imported: {e}"
        ) from e
    out = crf_probs(image, probs, preset=preset)
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.shape != probs.shape:
        raise RuntimeError(f"crf_probs returned shape {out.shape}, expected {probs.shape}")
    return out


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: np.ndarray, scales: Sequence[float] = TEST_SCALES,
                   flip: bool = True, size_divisor: int = 1, amp: bool = False) -> torch.Tensor:
    """Mean logits ``[C, H, W]`` (float32, on the model's device) over ``scales`` × (image,
    flipped image): each pass's logits are upsampled to the image size bilinearly with
    ``align_corners=True`` and flipped back before averaging (docs/reference.md §8)."""
    if not scales:
        raise ValueError("scales must name at least one scale")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an [H, W, 3] uint8 array, got shape {image.shape} dtype {image.dtype}")
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(normalize(image)).unsqueeze(0).to(device)
    H, W = x.shape[-2:]
    acc = None
    n = 0
    from ..device import autocast

    for s in scales:
        size = (_scaled_size(H, s, size_divisor), _scaled_size(W, s, size_divisor))
        xs = x if size == (H, W) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        with autocast(device, "auto" if amp else None):
            out = model(batch)
        out = F.interpolate(out.float(), size=(H, W), mode="bilinear", align_corners=True)
        part = out[0] + out[1].flip(-1) if flip else out[0]
        acc = part if acc is None else acc + part
        n += 2 if flip else 1
    return acc / n


def predict(model: torch.nn.Module, image: np.ndarray, scales: Sequence[float] = TEST_SCALES, flip: bool = True,
            crf=None, size_divisor: int = 1, amp: bool = False, return_probs: bool = False):
    """Segment one image the way the reference's ``test_deeplab.py`` does (docs/reference.md §8).

    Args:
        model: a :class:`~transcam_nb.segmentation.deeplab.DeepLab` (or any module mapping a
            normalised ``[B,3,h,w]`` batch to ``[B,C,h,w]`` logits); put it on the device first.
        image: ``[H, W, 3]`` uint8 RGB.
        scales: relative scales; each scaled size is ``round(H·s) × round(W·s)`` (rounded to a
            multiple of ``size_divisor`` when that is > 1; ResNets accept any size).
        flip: also run every scale horizontally flipped.
        crf: ``None``/``False`` (no CRF), ``True`` (preset ``"deeplab"``: 1 iteration, docs/reference.md
            §7.3) or a preset name for :func:`transcam_nb.postprocess.crf.crf_probs`.
        amp: run the forward passes under :func:`transcam_nb.device.autocast` (CUDA).
        return_probs: also return the ``[C, H, W]`` float32 probabilities (after the CRF).

    Returns:
        ``[H, W]`` uint8 label map (``(labels, probs)`` with ``return_probs``).
    """
    logits = predict_logits(model, image, scales=scales, flip=flip, size_divisor=size_divisor, amp=amp)
    probs = torch.softmax(logits, dim=0).cpu().numpy().astype(np.float32)
    if crf:
        probs = _crf_refine(np.ascontiguousarray(image), probs, crf)
    labels = probs.argmax(0).astype(np.uint8)
    return (labels, probs) if return_probs else labels


def _progress(it, total, desc, enable):
    if not enable:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, dynamic_ncols=True)


def evaluate_segmentation(model: torch.nn.Module, root: str | os.PathLike | None, ids: Iterable[str],
                          gt_dir: str | os.PathLike | None = None, scales: Sequence[float] = TEST_SCALES,
                          flip: bool = True, crf=None, num_classes: int | None = None,
                          save_dir: str | os.PathLike | None = None, size_divisor: int = 1, amp: bool = False,
                          progress: bool = True, image_dir: str | os.PathLike | None = None,
                          gt_of: Callable[[str], np.ndarray] | None = None):
    """Predict every image of ``ids`` with :func:`predict` and score it against the ground truth.

    Args:
        root: the VOC folder holding ``JPEGImages/`` (or a parent, see
            :func:`transcam_nb.data.voc.resolve_root`).
        ids: image ids (e.g. ``transcam_nb.data.voc.read_id_list(root/"ImageSets/Segmentation/val.txt")``).
        gt_dir: ground-truth PNGs (default ``<root>/SegmentationClass``).
        image_dir, gt_of: the images as ``<image_dir>/<id>.jpg`` and the ground truth as
            ``gt_of(id)`` (a uint8 mask) instead of ``root``'s files, e.g. a COCO split's folder and
            its rasterised masks (the pipeline passes its dataset's); ``root`` is then unused.
        num_classes: classes of the metric (default: ``model.num_classes``, else 21).
        save_dir: if given, each prediction is written there as ``<id>.png`` (VOC palette) and
            the scores as ``metrics.json``.

    Returns:
        the filled :class:`transcam_nb.metrics.ConfusionMatrix` (``.miou()``, ``.iou()``,
        ``.table()``); dataset-level counts as docs/reference.md §5.
    """
    from ..metrics import ConfusionMatrix

    if image_dir is None or gt_of is None:
        vroot = resolve_root(root)
        gt_dir = Path(gt_dir) if gt_dir is not None else vroot / "SegmentationClass"
        if gt_of is None and not gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder {str(gt_dir)!r} does not exist")
    image_dir = Path(image_dir) if image_dir is not None else vroot / "JPEGImages"
    if gt_of is None:
        gt_of = lambda image_id: read_label(gt_dir / f"{image_id}.png")  # noqa: E731
    ids = list(ids)
    if not ids:
        raise ValueError("ids is empty: nothing to evaluate")
    C = num_classes or getattr(model, "num_classes", 21)
    cm = ConfusionMatrix(num_classes=C, ignore_index=255)
    save_dir = Path(save_dir) if save_dir is not None else None
    for image_id in _progress(ids, len(ids), "evaluate", progress):
        image = _read_rgb(image_dir / f"{image_id}.jpg")
        gt = gt_of(image_id)
        if gt.shape != image.shape[:2]:
            raise ValueError(f"ground truth {image_id}.png has size {gt.shape}, image has {image.shape[:2]}")
        pred = predict(model, image, scales=scales, flip=flip, crf=crf, size_divisor=size_divisor, amp=amp)
        cm.update(pred, gt)
        if save_dir is not None:
            save_label_png(save_dir / f"{image_id}.png", pred)
    if save_dir is not None:
        summary = {
            "miou": float(cm.miou()),
            "iou": {name: float(v) for name, v in zip(cm.class_names, cm.iou())},
            "num_images": len(ids),
            "scales": list(scales),
            "flip": bool(flip),
            "crf": crf if isinstance(crf, (str, bool)) or crf is None else str(crf),
        }
        write_json(save_dir / "metrics.json", summary, sort_keys=False)
    return cm


# ----------------------------------------------------------------------------- VOC server export
def voc_results_dir(out_dir: str | os.PathLike, comp: str = "comp6", split: str = "test") -> Path:
    """``<out_dir>/results/VOC2012/Segmentation/<comp>_<split>_cls`` (the devkit's layout)."""
    if comp not in ("comp5", "comp6"):
        raise ValueError(f"comp must be 'comp5' (VOC data only) or 'comp6' (outside data), got {comp!r}")
    return Path(out_dir) / "results" / "VOC2012" / "Segmentation" / f"{comp}_{split}_cls"


def export_voc_test(pred, image_id: str, out_dir: str | os.PathLike, comp: str = "comp6",
                    split: str = "test", num_classes: int = 21) -> Path:
    """Write one prediction where the VOC evaluation server looks for it:
    ``<out_dir>/results/VOC2012/Segmentation/<comp>_<split>_cls/<image_id>.png``, an indexed
    PNG with the VOC palette whose pixel values are class indices ``0..num_classes-1``.
    Returns the file path."""
    if hasattr(pred, "detach"):
        pred = pred.detach().cpu().numpy()
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"prediction for {image_id!r} must be 2-D [H, W], got shape {pred.shape}")
    if pred.dtype.kind not in "iu":
        raise TypeError(f"prediction for {image_id!r} must hold integer class indices, got dtype {pred.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"prediction for {image_id!r} holds values outside 0..{num_classes - 1} "
            f"(min {pred.min()}, max {pred.max()}); the server takes class indices only"
        )
    if not image_id or "/" in image_id or "\\" in image_id:
        raise ValueError(f"image_id must be a bare VOC id like '2008_000001', got {image_id!r}")
    return save_label_png(voc_results_dir(out_dir, comp, split) / f"{image_id}.png", pred)


def predict_voc_test(model: torch.nn.Module, root: str | os.PathLike, out_dir: str | os.PathLike,
                     ids: Iterable[str] | None = None, comp: str = "comp6", split: str = "test",
                     scales: Sequence[float] = TEST_SCALES, flip: bool = True, crf=None,
                     size_divisor: int = 1, amp: bool = False, progress: bool = True) -> Path:
    """Predict every image of a split (default ids: ``<root>/ImageSets/Segmentation/<split>.txt``)
    and export it with :func:`export_voc_test`. Returns the results folder."""
    vroot = resolve_root(root)
    if ids is None:
        ids = read_id_list(vroot / "ImageSets" / "Segmentation" / f"{split}.txt")
    ids = list(ids)
    C = getattr(model, "num_classes", 21)
    for image_id in _progress(ids, len(ids), f"{split} export", progress):
        image = _read_rgb(vroot / "JPEGImages" / f"{image_id}.jpg")
        pred = predict(model, image, scales=scales, flip=flip, crf=crf, size_divisor=size_divisor, amp=amp)
        export_voc_test(pred, image_id, out_dir, comp=comp, split=split, num_classes=C)
    return voc_results_dir(out_dir, comp, split)


def make_submission_archive(out_dir: str | os.PathLike, comp: str = "comp6", split: str = "test",
                            archive: str | os.PathLike | None = None) -> Path:
    """Pack ``results/VOC2012/Segmentation/<comp>_<split>_cls`` into a ``.tar.gz`` (paths inside
    start with ``results/``, as the server expects). Written atomically; returns its path."""
    out_dir = Path(out_dir)
    folder = voc_results_dir(out_dir, comp, split)
    # hidden names are temporary files of an interrupted atomic write, never VOC ids
    pngs = sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))
    if not pngs:
        raise FileNotFoundError(f"no PNG predictions in {str(folder)!r}; run predict_voc_test first")
    archive = Path(archive) if archive is not None else out_dir / f"{comp}_{split}_results.tar.gz"
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for p in pngs:
                tar.add(p, arcname=str(p.relative_to(out_dir)))
    return archive
