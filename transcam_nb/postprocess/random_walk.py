"""PSA's random walk (docs/reference.md §7.2): ``T = colnorm(A^β)``, ``T ← T·T`` ``logt`` times
(t = 2^logt = 128 steps), the (C+1)-channel CAM (channel 0 = constant 0.42) average-pooled to 1/8
multiplied by ``T``, upsampled and arg-maxed (steps 1–8; step 9, the CRF, is optional here).

The affinities come from :func:`transcam_nb.postprocess.affinity.dense_affinity` or a trained
:class:`~transcam_nb.postprocess.affinity.AffinityNet`. Device-agnostic: the transition matrix is
built where the affinity lives (or on ``device=``).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, normalize

__all__ = ["transition_matrix", "random_walk", "prepare_image"]


@contextlib.contextmanager
def _flush_denormals(enabled: bool):
    """Treat subnormal floats as 0 on CPU while inside (restored to torch's default, off, after).

    ``A^14`` holds values like 1e-20 whose products are subnormal; CPU matmuls slow down ~20×
    on them. Flushing changes entries below ~1e-38 only, far below any probability that can
    decide an argmax (GPUs run subnormals at full speed, so this is CPU only)."""
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def transition_matrix(aff_dense: torch.Tensor, beta: float = 14, logt: int = 7) -> torch.Tensor:
    """Random-walk transition matrix (docs/reference.md §7.2 steps 3–5).

    ``A^β`` (element-wise; larger β sharpens), divided by its column sums (so every column
    sums to 1: column-stochastic), then squared ``logt`` times, giving ``T^(2^logt)``
    (t = 128 steps for logt = 7). On CPU the squarings flush subnormal floats to zero (see
    :func:`_flush_denormals`; ~20× faster, differences below 1e-30).
    """
    if aff_dense.dim() != 2 or aff_dense.shape[0] != aff_dense.shape[1]:
        raise ValueError(f"aff_dense must be a square [n, n] matrix, got {tuple(aff_dense.shape)}")
    if int(logt) != logt or logt < 0:
        raise ValueError(f"logt must be a non-negative integer, got {logt}")
    a = torch.pow(aff_dense, beta)
    colsum = a.sum(dim=0, keepdim=True)
    if bool((colsum <= 0).any()):
        raise ValueError("aff_dense has a column with no positive affinity (the diagonal should be 1)")
    t = a / colsum
    with _flush_denormals(t.device.type == "cpu"):
        for _ in range(int(logt)):
            t = t @ t
    return t


def prepare_image(image, stride: int = 8, device=None) -> torch.Tensor:
    """uint8 (H, W, 3) RGB → ImageNet-normalised [1, 3, H', W'] zero-padded at the right/bottom
    to multiples of ``stride`` (docs/reference.md §7.2 step 1; the padding is 0 after normalisation)."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got {a.dtype} {a.shape}")
    x = torch.from_numpy(normalize(a))
    h, w = a.shape[:2]
    ph, pw = -h % stride, -w % stride
    x = F.pad(x, (0, pw, 0, ph))
    return x.unsqueeze(0).to(device) if device is not None else x.unsqueeze(0)


def random_walk(
    cams,
    classes: Sequence[int],
    affinity: torch.Tensor | nn.Module,
    image=None,
    *,
    num_classes: int = 20,
    bg: float = 0.42,
    beta: float = 14,
    logt: int = 7,
    radius: int = 5,
    stride: int = 8,
    crf: bool = False,
    crf_preset="label",
    postprocess: str = "crf",
    device=None,
    return_scores: bool = False,
):
    """PSA random walk of normalised CAMs over affinities (docs/reference.md §7.2).

    Parameters
    ----------
    cams, classes:
        float (K, H, W) normalised CAMs of the present classes at the image's size and their
        0-based foreground indices (the format of :func:`transcam_nb.cam.multiscale_cam`).
    affinity:
        either the dense [n, n] affinity (``n = ceil(H/8) · ceil(W/8)``, e.g. from
        :func:`dense_affinity`), or a trained :class:`AffinityNet` — then ``image`` (uint8
        (H, W, 3)) is required and the dense affinity is computed from it.
    bg, beta, logt:
        constant background score (0.42), affinity power (14), log2 of the number of steps (7).
    crf:
        also run step 9, :func:`~transcam_nb.postprocess.crf.crf_labels` (``n_labels =
        num_classes + 1``) on the padded image (padding de-normalises to the ImageNet mean
        colour, as the reference) before cropping; needs ``image``. ``postprocess="par"``
        uses PAR there instead of the CRF (:func:`~transcam_nb.postprocess.crf.refine_labels`).
    device:
        where the transition matrix is built (default: where the affinity is; a model runs on
        its own device).

    Steps: 1 pad to a multiple of 8; 2–5 ``T = transition_matrix(A, beta, logt)``; 6 the
    (num_classes+1)-channel CAM with channel 0 = ``bg`` and channel c+1 = CAM of class c, at
    full size, zero-padded, 8×8 average-pooled; 7 ``(C+1, n) @ T``; 8 bilinear upsampling
    (align_corners=False) to the padded size and argmax; crop to (H, W).

    Returns uint8 (H, W) labels (0 = background, c+1 = class c); with ``return_scores`` also
    the walked scores at 1/8 resolution, [C+1, H'/8, W'/8].
    """
    from .crf import _check_cams, check_postprocess, refine_labels

    check_postprocess(postprocess)
    cams, classes = _check_cams(cams, classes, None, num_classes)
    H, W = cams.shape[1:]
    Hp, Wp = H + (-H % stride), W + (-W % stride)
    h, w = Hp // stride, Wp // stride
    if isinstance(affinity, nn.Module):
        if image is None:
            raise ValueError("random_walk with an AffinityNet needs the image (uint8 (H, W, 3))")
        dev = next(affinity.parameters()).device  # the model runs where it lives
        was_training = affinity.training
        affinity.eval()
        try:
            x = prepare_image(image, stride, dev)
            if x.shape[-2:] != (Hp, Wp):
                raise ValueError(f"image size {np.asarray(image).shape[:2]} differs from the CAM size {(H, W)}")
            aff = affinity.dense_affinity(x, radius)
        finally:
            affinity.train(was_training)
        if device is not None:
            aff = aff.to(device)
    elif isinstance(affinity, torch.Tensor):
        aff = affinity if device is None else affinity.to(device)
    else:
        raise TypeError(f"affinity must be a dense [n, n] tensor or an AffinityNet, got {type(affinity).__name__}")
    if tuple(aff.shape) != (h * w, h * w):
        raise ValueError(
            f"the affinity is {tuple(aff.shape)} but a {H}x{W} image padded to {Hp}x{Wp} needs "
            f"[{h * w}, {h * w}] (1/{stride} grid {h}x{w})"
        )
    dev = aff.device
    with torch.no_grad():
        trans = transition_matrix(aff.float(), beta, logt)
        full = torch.zeros(num_classes + 1, H, W, dtype=torch.float32)
        full[0] = bg
        for i, c in enumerate(classes):
            full[c + 1] = torch.from_numpy(np.ascontiguousarray(cams[i]))
        full = F.pad(full, (0, Wp - W, 0, Hp - H)).to(dev)  # channel 0 is 0 in the padding too
        small = F.avg_pool2d(full.unsqueeze(0), stride, stride)[0]  # [C+1, h, w]
        walked = (small.reshape(num_classes + 1, -1) @ trans).reshape(num_classes + 1, h, w)
        up = F.interpolate(walked.unsqueeze(0), size=(Hp, Wp), mode="bilinear", align_corners=False)[0]
        labels = up.argmax(0).cpu().numpy().astype(np.uint8 if num_classes < 256 else np.int64)
    if crf:
        if image is None:
            raise ValueError("random_walk(crf=True) needs the image (uint8 (H, W, 3))")
        img = np.asarray(image)
        if img.shape[:2] != (H, W):
            raise ValueError(f"image size {img.shape[:2]} differs from the CAM size {(H, W)}")
        pad_colour = np.floor(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)  # de-normalised zero padding
        padded = np.empty((Hp, Wp, 3), np.uint8)
        padded[:] = pad_colour
        padded[:H, :W] = img
        labels = refine_labels(padded, labels, num_classes + 1, postprocess, preset=crf_preset)
    labels = labels[:H, :W]
    if return_scores:
        return labels, walked.cpu()
    return labels
