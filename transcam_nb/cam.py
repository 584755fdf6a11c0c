"""Multi-scale, flip-augmented CAM inference (REFERENCE.md §3, the authors' ``infer_TransCAM.py``).

The paper preset (``square=True``, ``scales=(256, 512, 768)``, ``flip=True``) is the authors'
procedure, step for step:

1. Resize the RGB image to a **square** ``s × s`` with PIL bicubic, for each ``s`` in
   ``scales`` (the aspect ratio is not kept; it is restored by step 4).
2. ``np.asarray`` (uint8 HWC), ImageNet normalisation ``(x/255 - mean)/std`` computed in
   float64 and stored as float32, HWC → CHW. The horizontal flip of each scale is the flipped
   normalised array. (Image + flip are run as one batch of 2 by default: ``batch_flips``.)
3. Forward pass; the raw 3×3-conv CAM is refined with the block-aggregated attention
   (:func:`transcam_nb.refine.refine_cam`; Eq. 5 for ``method="transcam"``).
4. Keep the foreground channels ``1..K`` (channel 0 is the untrained "background" output),
   upsample bilinearly (``align_corners=False``) to the original ``H × W``, multiply by the
   image label (absent classes become 0), and flip the flipped passes back.
5. **Sum** the ``2·len(scales)`` maps in float32 (in pass order), ReLU, then per class:
   ``min``/``max`` over the image, values ``< min + 1e-5`` set to 0, and
   ``(x - min - 1e-5) / (max - min + 1e-5)``. Zeroed pixels therefore come out as a tiny
   negative number, and a class whose summed map is ``<= 0`` everywhere comes out as exactly
   ``-1.0`` at every pixel (the authors' numbers, kept as they are).

Only the present classes (label > 1e-5) are computed and returned, as the authors' CAM dict.

Options beyond the paper:

* ``square=False``: **aspect-preserving** resizes. A scale ``>= 16`` is the long side in pixels
  (256 → e.g. 256 × 192 for a 4:3 image); a scale ``< 16`` is a factor of the original size
  (0.5, 1.0, 1.5). Both sides are rounded to the nearest multiple of the patch size (at least
  one patch); the network takes non-square inputs.
* ``method``: any of :data:`transcam_nb.refine.METHODS`, and ``blocks`` (Table 3: AA/AS/AD or a
  list).
* Streaming attention: the model sums the head-mean attention of the chosen blocks on the
  fly (``model(x, attn_blocks=...)``), so one ``N × N`` accumulator per image is kept instead
  of the authors' 12 stacked maps (twice). Only ``rollout`` asks for the per-block maps.
* ``amp_dtype``: run the network under autocast (e.g. ``torch.bfloat16``); refinement, upsampling
  and fusion stay in float32.

Preprocessing: :func:`preprocess` resizes and calls the data package's ``normalize``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize  # noqa: F401 (re-exported)
from .refine import METHODS, refine_cam, resolve_blocks

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "preprocess",
    "scaled_size",
    "multiscale_sum",
    "normalize_cam",
    "multiscale_cam",
]

_LABEL_EPS = 1e-5  # a class is "present" when its label exceeds this (the authors' dict rule)


def _to_pil(image):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"image file {p} does not exist")
        with Image.open(p) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"image must be a PIL image, a path, or an H×W×3 uint8 array; got an array of shape {arr.shape} "
            f"and dtype {arr.dtype}"
        )
    return Image.fromarray(np.ascontiguousarray(arr))


def preprocess(image, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize (PIL bicubic) to ``size_hw`` and normalise as the authors: float32 ``[3, h, w]``.

    ``(x / 255 - mean) / std`` per channel is computed in float64 and stored as float32,
    exactly as ``tool.imutils.Normalize`` does (REFERENCE.md §3; golden README); the
    normalisation is :func:`transcam_nb.data.transforms.normalize`.
    """
    from PIL import Image

    pil = _to_pil(image)
    h, w = int(size_hw[0]), int(size_hw[1])
    return normalize(np.asarray(pil.resize((w, h), resample=Image.BICUBIC)))


def scaled_size(orig_hw: tuple[int, int], scale: float, *, square: bool = True, patch: int = 16) -> tuple[int, int]:
    """The network input size ``(h, w)`` for one scale (see the module docstring)."""
    H, W = int(orig_hw[0]), int(orig_hw[1])
    if scale <= 0:
        raise ValueError(f"scales must be positive, got {scale}")
    if square:
        s = int(scale)
        if s != scale or s % patch:
            raise ValueError(f"square scale {scale} must be an integer multiple of the patch size {patch}")
        return s, s
    if scale >= 16:  # long side in pixels
        f = float(scale) / max(H, W)
    else:  # a factor of the original size
        f = float(scale)
    r = lambda v: max(patch, int(round(v * f / patch)) * patch)
    return r(H), r(W)


def _present(labels, num_fg: int, device) -> tuple[np.ndarray, torch.Tensor]:
    if labels is None:
        lab = np.ones(num_fg, np.float32)
    else:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        lab = np.asarray(labels, dtype=np.float32).reshape(-1)
        if lab.size != num_fg:
            raise ValueError(
                f"labels has {lab.size} entries but the model has {num_fg} foreground classes "
                f"(num_classes = {num_fg + 1} including the unused channel 0)"
            )
    classes = np.flatnonzero(lab > _LABEL_EPS).astype(np.int64)
    weights = torch.from_numpy(lab[classes].copy()).to(device)
    return classes, weights


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def multiscale_sum(
    model,
    image,
    labels=None,
    *,
    scales: Sequence[float] = (256, 512, 768),
    flip: bool = True,
    square: bool = True,
    method: str = "transcam",
    blocks=None,
    reduce: str = "sum",
    batch_flips: bool = True,
    amp_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    return_passes: bool = False,
):
    """Steps 1-5 up to the **sum** of the maps (before ReLU/normalisation).

    Returns ``(sum_cam, classes)``: a float32 tensor ``[K, H, W]`` on the model's device and
    the ``K`` present class indices (numpy int64). With ``return_passes`` a third item lists
    the raw refined maps ``[1, C, h, w]`` of every pass in order (for tests and figures).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not scales:
        raise ValueError("scales is empty")
    pil = _to_pil(image)
    W, H = pil.size
    device = torch.device(device) if device is not None else _device_of(model)
    num_fg = int(getattr(model, "num_classes", 21)) - 1
    patch = int(getattr(model, "patch_size", 16))
    depth = int(getattr(model, "depth", 12))
    classes, weights = _present(labels, num_fg, device)
    K = classes.size
    passes: list[torch.Tensor] = []
    sum_cam = torch.zeros((K, H, W), dtype=torch.float32, device=device)
    if K == 0 and not return_passes:
        return (sum_cam, classes, passes) if return_passes else (sum_cam, classes)
    blk = resolve_blocks(blocks, depth)
    chan = torch.from_numpy(classes + 1).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        kw = {}
        if method == "rollout":
            kw["return_attn"] = True
        elif method != "none":
            kw["attn_blocks"] = blk
        if amp_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                out = model(x, **kw)
        else:
            out = model(x, **kw)
        attn = out.attn if method == "rollout" else out.attn_sum
        cam = out.cam.float()
        if method == "rollout":
            return refine_cam(cam, attn, "rollout", blocks=blk)
        if method != "none" and reduce == "mean":
            attn = attn / len(blk)
        return refine_cam(cam, attn, method)

    def add(cam: torch.Tensor, flipped: bool):
        # cam: [1, C, h, w] refined map of one pass
        if return_passes:
            passes.append(cam.detach().clone())
        m = F.interpolate(cam[:, chan], size=(H, W), mode="bilinear", align_corners=False)[0]
        m = m * weights[:, None, None]
        if flipped:
            m = m.flip(-1)
        sum_cam.add_(m)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in scales:
                h, w = scaled_size((H, W), s, square=square, patch=patch)
                x = torch.from_numpy(preprocess(pil, (h, w)))[None]
                if flip:
                    xf = x.flip(-1)
                    if batch_flips:
                        cams = run(torch.cat([x, xf]).to(device))
                        add(cams[0:1], False)
                        add(cams[1:2], True)
                    else:
                        add(run(x.to(device)), False)
                        add(run(xf.to(device)), True)
                else:
                    add(run(x.to(device)), False)
    finally:
        model.train(was_training)
    return (sum_cam, classes, passes) if return_passes else (sum_cam, classes)


def normalize_cam(sum_cam):
    """Step 5 after the sum: ReLU and the authors' per-class min-max (with their epsilons).

    Works on a torch tensor or numpy array ``[K, H, W]`` (float32 arithmetic, as the
    reference); returns the same type.
    """
    is_np = isinstance(sum_cam, np.ndarray)
    x = torch.from_numpy(sum_cam.copy()) if is_np else sum_cam.clone()
    x = x.float()
    if x.numel() == 0:
        return x.numpy() if is_np else x
    x[x < 0] = 0
    cam_max = x.amax(dim=(1, 2), keepdim=True)
    cam_min = x.amin(dim=(1, 2), keepdim=True)
    x[x < cam_min + 1e-5] = 0
    x = (x - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)
    return x.numpy() if is_np else x


def multiscale_cam(
    model,
    image,
    labels=None,
    *,
    scales: Sequence[float] = (256, 512, 768),
    flip: bool = True,
    square: bool = True,
    method: str = "transcam",
    blocks=None,
    batch_flips: bool = True,
    amp_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised multi-scale CAMs of the labelled classes, at the original resolution.

    Parameters
    ----------
    model
        A TransCAM network (``transcam_nb.models.create_model("transcam_small", ...)``) with
        ``K + 1`` outputs; channel ``k + 1`` is class ``k``. Run on the model's device.
    image
        A PIL image, an ``H × W × 3`` uint8 array, or an image path.
    labels
        The ``K``-dim multi-hot image label (20 for VOC). Classes with label > 1e-5 are
        computed and returned; ``None`` computes every class (no label known, e.g. test images).
    scales, flip, square
        The paper's ``(256, 512, 768)``, flips on, square resizes; see the module docstring
        for ``square=False``.
    method, blocks
        Refinement (``"transcam"``, ``"clsattn"``, ``"attnagg"``, ``"rollout"``, ``"none"``)
        and the blocks whose attention is used (default all: "AA").
    batch_flips
        Run each scale and its flip as one batch of two (default) or one at a time.
    amp_dtype
        ``None`` (float32) or an autocast dtype such as ``torch.bfloat16``.

    Returns
    -------
    ``(cams, classes)``: float32 ``[K, H, W]`` numpy array of normalised CAMs (in [0, 1],
    zeroed pixels slightly negative, degenerate classes ``-1``), and the ``K`` class indices
    (int64, 0-based).
    """
    sum_cam, classes = multiscale_sum(
        model, image, labels, scales=scales, flip=flip, square=square, method=method, blocks=blocks,
        batch_flips=batch_flips, amp_dtype=amp_dtype, device=device,
    )
    cams = normalize_cam(sum_cam)
    return cams.cpu().numpy().astype(np.float32, copy=False), classes
