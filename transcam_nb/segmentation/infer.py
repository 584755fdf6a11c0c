"""DeepLab inference: multi-scale + flip prediction, optional dense CRF, evaluation on VOC val,
and test-set PNG export for the PASCAL VOC evaluation server (REFERENCE.md §8).

The reference test (``test_deeplab.py``) runs the image at scales
``0.5, 0.75, 1.0, 1.25, 1.5, 1.75``, each also horizontally flipped (12 passes), upsamples every
logit map to the image size (bilinear, ``align_corners=True``), undoes the flips, **averages
the logits, then applies softmax**, refines the probabilities with a 1-iteration dense CRF
(REFERENCE.md §7.3, "DeepLab test" row) and takes the argmax. :func:`predict` does exactly that;
the CRF comes from :mod:`transcam_nb.postprocess.crf` (preset ``"deeplab"``).

The metric is the dataset-level confusion count of REFERENCE.md §5
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

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEST_SCALES",
    "voc_palette",
    "normalize_image",
    "read_image",
    "read_label",
    "read_ids",
    "resolve_voc_root",
    "save_label_png",
    "predict",
    "predict_logits",
    "evaluate_segmentation",
    "voc_results_dir",
    "export_voc_test",
    "predict_voc_test",
    "make_submission_archive",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the reference's test scales (REFERENCE.md §8)
TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# ----------------------------------------------------------------------------- small I/O
def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as an ``[n, 3]`` uint8 array (index 0 black, 1 dark red,
    …, 255 the light "void" colour). Built with the devkit's bit-interleaving rule: bit ``j`` of
    the three lowest bit-triples of the index sets bit ``7 - j`` of R, G and B."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def resolve_voc_root(root: str | os.PathLike) -> Path:
    """Return the folder that holds ``JPEGImages/``: ``root`` itself, ``root/VOC2012`` or
    ``root/VOCdevkit/VOC2012``; a clear error otherwise."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(
        f"no JPEGImages/ folder under {str(root)!r} (also tried VOC2012/ and VOCdevkit/VOC2012/); "
        "expected the VOC 2012 devkit layout"
    )


def read_ids(path: str | os.PathLike) -> list[str]:
    """Image ids from a list file: one per line (``ImageSets/Segmentation/*.txt``); the
    authors' ``voc12/*.txt`` form (``/JPEGImages/<id>.jpg ...``) is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {str(path)!r} does not exist")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        tok = line.split()[0]
        ids.append(Path(tok).stem if "/" in tok or tok.endswith(".jpg") else tok)
    return ids


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as ``[H, W, 3]`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_label(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """A label PNG as ``[H, W]`` uint8 class indices (255 = ignore).

    Indexed (palette) and single-channel PNGs hold the index directly. An RGB PNG is mapped
    back through the VOC palette; an unknown colour, or (with ``num_classes``) a value
    ``>= num_classes`` other than 255, raises a ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label {str(path)!r} does not exist")
    with Image.open(path) as im:
        if im.mode in ("P", "L"):
            lab = np.asarray(im, dtype=np.uint8).copy()
        elif im.mode in ("I", "I;16", "I;16B"):
            arr = np.asarray(im)
            if arr.max() > 255 or arr.min() < 0:
                raise ValueError(f"label {str(path)!r} holds values outside 0..255")
            lab = arr.astype(np.uint8)
        elif im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            pal = voc_palette().astype(np.int64)
            pcode = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
            lut = {int(c): i for i, c in enumerate(pcode)}
            uniq, inv = np.unique(code, return_inverse=True)
            unknown = [u for u in uniq.tolist() if u not in lut]
            if unknown:
                raise ValueError(
                    f"label {str(path)!r} is an RGB image with colours that are not in the VOC "
                    f"palette (e.g. #{unknown[0]:06x}); save labels as indexed or single-channel PNGs"
                )
            lab = np.array([lut[u] for u in uniq.tolist()], dtype=np.uint8)[inv].reshape(code.shape)
        else:
            raise ValueError(f"label {str(path)!r} has unsupported PNG mode {im.mode!r} (expected P, L or RGB)")
    if num_classes is not None:
        bad = (lab >= num_classes) & (lab != 255)
        if bad.any():
            raise ValueError(
                f"label {str(path)!r} holds values {np.unique(lab[bad])[:10].tolist()} that are neither "
                f"a class index < {num_classes} nor the ignore value 255"
            )
    return lab


def save_label_png(path: str | os.PathLike, label, palette: np.ndarray | None = None) -> Path:
    """Write ``label`` (``[H, W]`` integers in 0..255) as an indexed PNG with the VOC palette
    (or ``palette``), atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    if hasattr(label, "detach"):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label for {str(path)!r} must be 2-D [H, W], got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label for {str(path)!r} holds values outside 0..255")
    im = Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)))  # mode "L"
    pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    im.putpalette(pal.reshape(-1).tolist())  # turns the "L" image into an indexed "P" image
    if im.mode != "P":  # pragma: no cover - Pillow behaviour guard
        raise RuntimeError(f"could not make an indexed PNG for {str(path)!r} (mode {im.mode})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB → ``[3, H, W]`` float32, ImageNet mean/std normalised (as the
    reference's DeepLab data pipeline)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an [H, W, 3] uint8 array, got shape {image.shape} dtype {image.dtype}")
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


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
    ``align_corners=True`` and flipped back before averaging (REFERENCE.md §8)."""
    if not scales:
        raise ValueError("scales must name at least one scale")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    model.eval()
    device = next(model.parameters()).device
    x = normalize_image(image).unsqueeze(0).to(device)
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
    """Segment one image the way the reference's ``test_deeplab.py`` does (REFERENCE.md §8).

    Args:
        model: a :class:`~transcam_nb.segmentation.deeplab.DeepLab` (or any module mapping a
            normalised ``[B,3,h,w]`` batch to ``[B,C,h,w]`` logits); put it on the device first.
        image: ``[H, W, 3]`` uint8 RGB.
        scales: relative scales; each scaled size is ``round(H·s) × round(W·s)`` (rounded to a
            multiple of ``size_divisor`` when that is > 1; ResNets accept any size).
        flip: also run every scale horizontally flipped.
        crf: ``None``/``False`` (no CRF), ``True`` (preset ``"deeplab"``: 1 iteration, REFERENCE.md
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


def evaluate_segmentation(model: torch.nn.Module, root: str | os.PathLike, ids: Iterable[str],
                          gt_dir: str | os.PathLike | None = None, scales: Sequence[float] = TEST_SCALES,
                          flip: bool = True, crf=None, num_classes: int | None = None,
                          save_dir: str | os.PathLike | None = None, size_divisor: int = 1, amp: bool = False,
                          progress: bool = True):
    """Predict every image of ``ids`` with :func:`predict` and score it against the ground truth.

    Args:
        root: the VOC folder holding ``JPEGImages/`` (see :func:`resolve_voc_root`).
        ids: image ids (e.g. ``read_ids(root/"ImageSets/Segmentation/val.txt")``).
        gt_dir: ground-truth PNGs (default ``<root>/SegmentationClass``).
        num_classes: classes of the metric (default: ``model.num_classes``, else 21).
        save_dir: if given, each prediction is written there as ``<id>.png`` (VOC palette) and
            the scores as ``metrics.json``.

    Returns:
        the filled :class:`transcam_nb.metrics.ConfusionMatrix` (``.miou()``, ``.iou()``,
        ``.table()``); dataset-level counts as REFERENCE.md §5.
    """
    from ..metrics import ConfusionMatrix

    vroot = resolve_voc_root(root)
    gt_dir = Path(gt_dir) if gt_dir is not None else vroot / "SegmentationClass"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder {str(gt_dir)!r} does not exist")
    ids = list(ids)
    if not ids:
        raise ValueError("ids is empty: nothing to evaluate")
    C = num_classes or getattr(model, "num_classes", 21)
    cm = ConfusionMatrix(num_classes=C, ignore_index=255)
    save_dir = Path(save_dir) if save_dir is not None else None
    for image_id in _progress(ids, len(ids), "evaluate", progress):
        image = read_image(vroot / "JPEGImages" / f"{image_id}.jpg")
        gt = read_label(gt_dir / f"{image_id}.png")
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
        _atomic_write_text(save_dir / "metrics.json", json.dumps(summary, indent=2))
    return cm


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
    vroot = resolve_voc_root(root)
    if ids is None:
        ids = read_ids(vroot / "ImageSets" / "Segmentation" / f"{split}.txt")
    ids = list(ids)
    C = getattr(model, "num_classes", 21)
    for image_id in _progress(ids, len(ids), f"{split} export", progress):
        image = read_image(vroot / "JPEGImages" / f"{image_id}.jpg")
        pred = predict(model, image, scales=scales, flip=flip, crf=crf, size_divisor=size_divisor, amp=amp)
        export_voc_test(pred, image_id, out_dir, comp=comp, split=split, num_classes=C)
    return voc_results_dir(out_dir, comp, split)


def make_submission_archive(out_dir: str | os.PathLike, comp: str = "comp6", split: str = "test",
                            archive: str | os.PathLike | None = None) -> Path:
    """Pack ``results/VOC2012/Segmentation/<comp>_<split>_cls`` into a ``.tar.gz`` (paths inside
    start with ``results/``, as the server expects). Written atomically; returns its path."""
    out_dir = Path(out_dir)
    folder = voc_results_dir(out_dir, comp, split)
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        raise FileNotFoundError(f"no PNG predictions in {str(folder)!r}; run predict_voc_test first")
    archive = Path(archive) if archive is not None else out_dir / f"{comp}_{split}_results.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=archive.name + ".", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for p in pngs:
                tar.add(p, arcname=str(p.relative_to(out_dir)))
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return archive
