"""Multi-scale, flip-augmented CAM inference (docs/reference.md §3, the authors' ``infer_TransCAM.py``).

The paper preset (``square=True``, ``scales=(256, 512, 768)``, ``flip=True``) is the authors'
procedure, step for step:

1. Resize the RGB image to a **square** ``s × s`` with PIL bicubic, for each ``s`` in
   ``scales`` (the aspect ratio is not kept; it is restored by step 4).
2. ``np.asarray`` (uint8 HWC), ImageNet normalisation ``(x/255 - mean)/std`` computed in
   float64 and stored as float32, HWC → CHW. The horizontal flip of each scale is the flipped
   normalised array. (Image + flip run as one batch of 2 on a GPU, one at a time on a CPU, where
   that measured faster and leaner: ``batch_flips``.)
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
* ``attention="sdpa"`` (default): Eq. 5 is computed as an attention with the CAM as values
  from each chosen block's queries and keys (``model(x, keep_qk=...)``,
  :func:`transcam_nb.refine.refine_cam_sdpa`), so no ``N × N`` matrix is ever stored.
  ``attention="explicit"`` uses the maps themselves: the model sums the head-mean attention of
  the chosen blocks on the fly (``model(x, attn_blocks=...)``), one ``N × N`` accumulator per
  image instead of the authors' 12 stacked maps (twice). Methods ask for what they need through
  :data:`transcam_nb.refine.REFINEMENTS`; this module treats them all alike.
* ``precision``: ``"fp32"`` (default), ``"bf16"`` or on CUDA ``"fp16"``: the network runs under
  autocast with its convolutions in channels_last; refinement sums, upsampling, fusion and
  normalisation stay float32 (:mod:`transcam_nb.device`).
* :func:`multiscale_variants`: several refinement variants from one pass per input, on the
  same per-pass loop as :func:`multiscale_cam`.

Preprocessing: :func:`preprocess` resizes and calls the data package's ``normalize``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize  # noqa: F401 (re-exported)
from .device import channels_last, precision_autocast, resolve_precision
from .refine import PassAttention, forward_request, get_refinement, resolve_blocks, select_variants

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "preprocess",
    "scaled_size",
    "multiscale_sum",
    "normalize_cam",
    "multiscale_cam",
    "multiscale_variants",
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
    exactly as ``tool.imutils.Normalize`` does (docs/reference.md §3; golden README); the
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


def _precision_arg(precision, amp_dtype, device) -> str:
    if amp_dtype is not None:
        warnings.warn("amp_dtype= is deprecated; use precision='bf16' / 'fp16' / 'fp32'", DeprecationWarning,
                      stacklevel=3)
        precision = amp_dtype
    return resolve_precision(precision, device)


@dataclass
class _Pass:
    """One forward pass of the multi-scale loop: scale index, input size, the model output and,
    per batch item, whether the input was the flipped image."""

    index: int
    size_hw: tuple[int, int]
    out: object
    flipped: tuple[bool, ...]


def _passes(model, pil, *, scales, flip, square, batch_flips, device, precision, forward_kw) -> Iterator[_Pass]:
    """The one per-pass loop behind every multi-scale function: eval mode, no grad, the
    precision policy (autocast and, below fp32, channels_last convolutions), scale by scale,
    image and flip as one batch of two (``batch_flips``) or one at a time."""
    W, H = pil.size
    patch = int(getattr(model, "patch_size", 16))
    fast = precision != "fp32"
    if batch_flips is None:  # measured on a 2-core CPU at paper scale: one at a time 1.3x faster, 0.4 GiB less
        batch_flips = device.type != "cpu"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), channels_last(model, enabled=fast):
            for i, s in enumerate(scales):
                h, w = scaled_size((H, W), s, square=square, patch=patch)
                x = torch.from_numpy(preprocess(pil, (h, w)))[None]
                if flip and batch_flips:
                    groups = [(torch.cat([x, x.flip(-1)]), (False, True))]
                else:
                    groups = [(x, (False,))] + ([(x.flip(-1), (True,))] if flip else [])
                for xb, flips in groups:
                    xb = xb.to(device)
                    if fast:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    with precision_autocast(device, precision):
                        out = model(xb, **forward_kw)
                    yield _Pass(i, (h, w), out, flips)
    finally:
        model.train(was_training)


class _Fusion:
    """Step 4-5 up to the sum, for one variant: upsample, weight by the label, flip back, add."""

    def __init__(self, method: str, blocks: list[int], classes: np.ndarray, weights: torch.Tensor,
                 size_hw: tuple[int, int], attention: str, reduce: str, device, keep_passes: bool = False):
        ref = get_refinement(method)
        self.needs, self.fn = ref.impl(attention)
        self.blocks, self.reduce = blocks, reduce
        self.H, self.W = size_hw
        self.weights = weights
        self.chan = torch.from_numpy(classes + 1).to(device)
        # refine only the present channels unless the method mixes channels or every pass is kept
        self.subset = ref.per_channel and not keep_passes
        self.sum = torch.zeros((classes.size, self.H, self.W), dtype=torch.float32, device=device)
        self.passes: list[torch.Tensor] | None = [] if keep_passes else None

    def add(self, p: _Pass, att: PassAttention) -> None:
        cam = p.out.cam.float()
        if self.subset:
            cam = cam[:, self.chan]
        ref = cam if self.needs == "none" else self.fn(cam, att, self.blocks, reduce=self.reduce)
        ref = ref.float()
        if not self.subset:
            if self.passes is not None:
                self.passes.extend(ref[b:b + 1].detach().clone() for b in range(ref.shape[0]))
            ref = ref[:, self.chan]
        m = F.interpolate(ref, size=(self.H, self.W), mode="bilinear", align_corners=False)
        m = m * self.weights[None, :, None, None]
        for b, flipped in enumerate(p.flipped):
            self.sum.add_(m[b].flip(-1) if flipped else m[b])


def _setup(model, image, labels, device):
    pil = _to_pil(image)
    device = torch.device(device) if device is not None else _device_of(model)
    num_fg = int(getattr(model, "num_classes", 21)) - 1
    classes, weights = _present(labels, num_fg, device)
    return pil, device, classes, weights


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
    batch_flips: bool | None = None,
    attention: str = "sdpa",
    precision: str = "fp32",
    amp_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    return_passes: bool = False,
):
    """Steps 1-5 up to the **sum** of the maps (before ReLU/normalisation).

    Returns ``(sum_cam, classes)``: a float32 tensor ``[K, H, W]`` on the model's device and
    the ``K`` present class indices (numpy int64). With ``return_passes`` a third item lists
    the raw refined maps ``[1, C, h, w]`` of every pass in order (for tests and figures).
    ``attention``, ``precision``: see :func:`multiscale_cam`.
    """
    get_refinement(method)
    if not scales:
        raise ValueError("scales is empty")
    pil, device, classes, weights = _setup(model, image, labels, device)
    precision = _precision_arg(precision, amp_dtype, device)
    blk = resolve_blocks(blocks, int(getattr(model, "depth", 12)))
    fusion = _Fusion(method, blk, classes, weights, pil.size[::-1], attention, reduce, device, keep_passes=return_passes)
    if classes.size or return_passes:
        kw, sum_blocks = forward_request([(method, blk)], attention)
        for p in _passes(model, pil, scales=scales, flip=flip, square=square, batch_flips=batch_flips,
                         device=device, precision=precision, forward_kw=kw):
            fusion.add(p, PassAttention(p.out, sum_blocks))
    return (fusion.sum, classes, fusion.passes) if return_passes else (fusion.sum, classes)


def multiscale_variants(
    model,
    image,
    labels=None,
    *,
    variants: dict | Iterable[str] | None = None,
    scales: Sequence[float] = (256, 512, 768),
    flip: bool = True,
    square: bool = True,
    batch_flips: bool | None = None,
    attention: str = "sdpa",
    precision: str = "fp32",
    device: str | torch.device | None = None,
    return_attn: bool = False,
    on_pass: Callable[[_Pass], None] | None = None,
) -> dict:
    """Normalised multi-scale CAMs of several refinement variants from **one** pass per input.

    ``variants`` is ``{name: (method, blocks)}``, a list of names of
    :data:`transcam_nb.refine.VARIANTS` (or their short aliases), or ``None`` for all of them.
    The network runs once per scale and flip; the forward pass keeps what the variants together
    need (:func:`transcam_nb.refine.forward_request`). Each variant's numbers equal
    :func:`multiscale_cam` with the same ``(method, blocks)`` (tested). ``on_pass(p)`` is called
    after each forward pass (``p.out`` is the model output; ``return_attn`` makes it hold every
    block's map, for diagnostics). Returns ``{name: (cams [K, H, W], classes)}``.
    """
    if variants is None or not isinstance(variants, dict):
        variants = select_variants(variants)
    if not scales:
        raise ValueError("scales is empty")
    pil, device, classes, weights = _setup(model, image, labels, device)
    precision = resolve_precision(precision, device)
    depth = int(getattr(model, "depth", 12))
    reqs = {name: (m, resolve_blocks(b, depth)) for name, (m, b) in variants.items()}
    fusions = {name: _Fusion(m, b, classes, weights, pil.size[::-1], attention, "sum", device)
               for name, (m, b) in reqs.items()}
    if classes.size or on_pass is not None:
        kw, sum_blocks = forward_request(reqs.values(), attention, return_attn=return_attn)
        for p in _passes(model, pil, scales=scales, flip=flip, square=square, batch_flips=batch_flips,
                         device=device, precision=precision, forward_kw=kw):
            if on_pass is not None:
                on_pass(p)
            att = PassAttention(p.out, sum_blocks)
            for f in fusions.values():
                f.add(p, att)
    return {name: (normalize_cam(f.sum).cpu().numpy(), classes) for name, f in fusions.items()}


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
    batch_flips: bool | None = None,
    attention: str = "sdpa",
    precision: str = "fp32",
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
        Run each scale and its flip as one batch of two or one at a time; ``None`` (default):
        batched on a GPU, one at a time on a CPU (measured faster and leaner there).
    attention
        ``"sdpa"`` (default): methods with a fused implementation (``transcam``, ``clsattn``)
        refine from the kept queries and keys with ``scaled_dot_product_attention``, so no
        ``N × N`` matrix exists. ``"explicit"``: the attention maps themselves (head-mean,
        summed over the blocks on the fly), the authors' algorithm. Both agree within float
        rounding (tested); ``attnagg`` and ``rollout`` are always explicit.
    precision
        ``"fp32"`` (default, golden-equal), ``"bf16"`` (autocast, convolutions in channels_last;
        refinement sums, upsampling, fusion and normalisation stay float32) or, on CUDA, ``"fp16"``.
    amp_dtype
        Deprecated alias of ``precision`` (``torch.bfloat16`` = ``"bf16"``).

    Returns
    -------
    ``(cams, classes)``: float32 ``[K, H, W]`` numpy array of normalised CAMs (in [0, 1],
    zeroed pixels slightly negative, degenerate classes ``-1``), and the ``K`` class indices
    (int64, 0-based).
    """
    sum_cam, classes = multiscale_sum(
        model, image, labels, scales=scales, flip=flip, square=square, method=method, blocks=blocks,
        batch_flips=batch_flips, attention=attention, precision=_precision_arg(precision, amp_dtype, device),
        device=device,
    )
    cams = normalize_cam(sum_cam)
    return cams.cpu().numpy().astype(np.float32, copy=False), classes
