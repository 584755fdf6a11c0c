"""PAR: pixel-adaptive refinement (Ru et al., "Learning Affinity from Attention", AFA, CVPR 2022).

A CRF-free post-processing of CAMs or class probabilities: a few iterations of local,
image-guided propagation. Every pixel *i* looks at the 8 neighbours of a 3×3 kernel at each
of several dilations *d* (48 neighbours *j* for the paper's six dilations, image borders
replicated) and mixes their scores with weights built from two kernels:

* colour: ``κ_rgb(i, j) = −mean_c ( |I_c(i) − I_c(j)| / (w1 · σ_c(i)) )²``, with ``σ_c(i)`` the
  standard deviation of channel *c* over the neighbours of *i* (so the kernel adapts to the
  local contrast: the scale of the image does not matter);
* position: ``κ_pos(i, j) = −( ‖p_i − p_j‖ / (w2 · σ_pos) )²``, with ``‖p_i − p_j‖`` = *d* or
  *d*√2 and ``σ_pos`` the standard deviation of those distances (the same for every pixel).

The transition weights are ``α(i, ·) = softmax_j κ_rgb(i, ·) + w3 · softmax_j κ_pos(i, ·)`` and one
iteration is ``M(i, c) ← Σ_j α(i, j) M(j, c)`` for every class channel *c*.

The paper's settings (:class:`PARConfig` defaults): dilations 1, 2, 4, 8, 12, 24; 10 iterations;
w1 = w2 = 0.3; w3 = 0.01.

Normalisation. The weights of one pixel sum to ``1 + w3``, so the paper's update scales every map
by ``(1 + w3)`` per iteration. By default (``normalize=True``) we divide by ``1 + w3``: the update
is then an average, a constant map stays constant and probabilities stay probabilities (each
pixel's scores keep their sum). The scaling is the same everywhere, so the argmax — the label
map — is the same either way; ``normalize=False`` gives the paper's raw sums.

Because the update is linear and the same for every channel, an affine change of the seed scores
(``a·M + b``, ``a > 0``) changes nothing in the argmax: hard label seeds can be refined as
one-hot maps (:func:`par_labels`), whatever confidence a CRF's ``gt_prob`` would give them.

Cost. The weights take ``O(48 · H · W)`` memory once per image; each iteration is 48 shifted
multiply-adds over the ``[B, C, H, W]`` scores: plain tensor operations on any device, batched,
no compiled extension (unlike :mod:`.crf`, which needs the pydensecrf C++ build).

Functions: :func:`par_affinity` (the weights), :func:`par_refine` (batched tensors),
:func:`par_probs` / :func:`par_labels` (one image as numpy arrays, mirroring
:func:`~transcam_nb.postprocess.crf.crf_probs` / :func:`~transcam_nb.postprocess.crf.crf_labels`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PARConfig", "PAR_DEFAULT", "par_offsets", "par_affinity", "par_refine", "par_probs", "par_labels"]


@dataclass(frozen=True)
class PARConfig:
    """PAR settings (defaults: AFA's, see the module docstring)."""

    dilations: tuple = (1, 2, 4, 8, 12, 24)
    iterations: int = 10
    w_rgb: float = 0.3  # w1: width of the colour kernel, in local standard deviations
    w_pos: float = 0.3  # w2: width of the position kernel
    w_mix: float = 0.01  # w3: weight of the position kernel against the colour kernel
    normalize: bool = True  # divide the weights by (1 + w3): an average (see the module docstring)
    eps: float = 1e-8  # added to the standard deviations

    def __post_init__(self):
        dil = tuple(int(d) for d in self.dilations)
        if not dil or min(dil) < 1:
            raise ValueError(f"PAR dilations must be positive integers, got {self.dilations}")
        object.__setattr__(self, "dilations", dil)
        if int(self.iterations) < 0:
            raise ValueError(f"PAR iterations must be >= 0, got {self.iterations}")
        if self.w_rgb <= 0 or self.w_pos <= 0 or self.w_mix < 0:
            raise ValueError(f"PAR needs w_rgb > 0, w_pos > 0, w_mix >= 0; got {self.w_rgb}, {self.w_pos}, {self.w_mix}")


PAR_DEFAULT = PARConfig()

#: On CPU, each propagation step runs over bands of rows of about this many score elements.
_CPU_BAND_ELEMENTS = 1 << 18


def _config(config: PARConfig | None, overrides: dict) -> PARConfig:
    cfg = config if config is not None else PAR_DEFAULT
    if not overrides:
        return cfg
    known = {f.name for f in dataclasses.fields(PARConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown PAR setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return dataclasses.replace(cfg, **overrides)


def par_offsets(dilations) -> list[tuple[int, int]]:
    """The (dy, dx) neighbour offsets: the 8 off-centre cells of a 3×3 kernel per dilation."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(dy * d, dx * d) for d in dilations for dy, dx in ring]


def _shifted(xpad: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """``x`` moved so that position (y, x) holds the value at (y + dy, x + dx)."""
    return xpad[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def _as_batch(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__} (par_probs takes numpy arrays)")
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    return x, False


def par_affinity(images: torch.Tensor, config: PARConfig | None = None, **overrides) -> torch.Tensor:
    """The PAR transition weights ``[B, N, H, W]`` (N = 8 × number of dilations, in the order of
    :func:`par_offsets`) for images ``[B, 3, H, W]`` (any channel count, any value scale; uint8 is
    converted to float). Each pixel's weights sum to 1 (``normalize``) or ``1 + w3``."""
    cfg = _config(config, overrides)
    images, _ = _as_batch(images, "images")
    img = images.float() if not images.is_floating_point() or images.dtype == torch.float16 else images
    b, c, h, w = img.shape
    offsets = par_offsets(cfg.dilations)
    n = len(offsets)
    pad = max(cfg.dilations)
    ipad = F.pad(img, [pad] * 4, mode="replicate")

    # per-channel mean and (unbiased) standard deviation over the neighbours, in two passes
    mean = torch.zeros_like(img)
    for dy, dx in offsets:
        mean += _shifted(ipad, pad, dy, dx, h, w)
    mean /= n
    var = torch.zeros_like(img)
    for dy, dx in offsets:
        var += (_shifted(ipad, pad, dy, dx, h, w) - mean) ** 2
    std = (var / (n - 1)).sqrt() + cfg.eps if n > 1 else torch.full_like(img, cfg.eps)

    kappa = img.new_empty(b, n, h, w)
    scale = 1.0 / (cfg.w_rgb * std)
    for k, (dy, dx) in enumerate(offsets):
        z = (_shifted(ipad, pad, dy, dx, h, w) - img) * scale
        kappa[:, k] = -(z * z).mean(dim=1)
    aff = torch.softmax(kappa, dim=1)

    if cfg.w_mix > 0:
        dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=torch.float64)
        pos_std = float(dist.std()) if n > 1 else 0.0
        kpos = -(dist / (cfg.w_pos * pos_std + cfg.eps)) ** 2
        pos = torch.softmax(kpos, dim=0).to(device=img.device, dtype=img.dtype)
        aff = aff + cfg.w_mix * pos.view(1, n, 1, 1)
    if cfg.normalize:
        aff = aff / (1.0 + cfg.w_mix)
    return aff


def par_refine(images: torch.Tensor, scores: torch.Tensor, config: PARConfig | None = None, **overrides) -> torch.Tensor:
    """Refine scores (CAMs or probabilities) ``[B, C, H', W']`` guided by images ``[B, 3, H, W]``.

    Unbatched ``[3, H, W]`` / ``[C, H', W']`` inputs give an unbatched result. Scores of
    another size than the images are first resized bilinearly to the image size. Works on the
    device of the inputs; the result has the scores' floating dtype (float32 for integer input).
    Keyword overrides change single :class:`PARConfig` fields, e.g. ``iterations=5``.
    """
    cfg = _config(config, overrides)
    images, squeeze = _as_batch(images, "images")
    scores, squeeze_s = _as_batch(scores, "scores")
    if squeeze != squeeze_s:
        raise ValueError(
            f"images and scores must both be batched or both unbatched, got {tuple(images.shape)} and {tuple(scores.shape)}"
        )
    if images.shape[0] != scores.shape[0]:
        raise ValueError(f"images and scores have different batch sizes: {images.shape[0]} vs {scores.shape[0]}")
    if images.device != scores.device:
        raise ValueError(f"images are on {images.device} but scores on {scores.device}")
    x = scores if scores.is_floating_point() else scores.float()
    h, w = images.shape[-2:]
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    aff = par_affinity(images, cfg).to(x.dtype)
    offsets = par_offsets(cfg.dilations)
    pad = max(cfg.dilations)
    # on CPU, bands of rows that stay in cache (about 2x faster); elsewhere the whole map at once
    band = h if x.device.type != "cpu" else max(8, -(-_CPU_BAND_ELEMENTS // max(1, x.shape[0] * x.shape[1] * w)))
    for _ in range(int(cfg.iterations)):
        xpad = F.pad(x, [pad] * 4, mode="replicate")
        out = torch.zeros_like(x)
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            o = out[..., y0:y1, :]
            for k, (dy, dx) in enumerate(offsets):
                o.addcmul_(aff[:, k: k + 1, y0:y1], xpad[..., pad + dy + y0: pad + dy + y1, pad + dx: pad + dx + w])
        x = out
    return x[0] if squeeze else x


# ------------------------------------------------------------------------------------------
# numpy, one image (the interface of postprocess.crf)
# ------------------------------------------------------------------------------------------
def _image_tensor(image, device) -> torch.Tensor:
    from .checks import _check_image

    img = _check_image(image)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().to(device)


def par_probs(image, probs, config: PARConfig | None = None, device="cpu", **overrides) -> np.ndarray:
    """PAR on one image: ``image`` uint8 (H, W, 3), ``probs`` (C, H, W) in [0, 1]; returns
    float32 (C, H, W) (each pixel keeps its sum under ``normalize``). The counterpart of
    :func:`~transcam_nb.postprocess.crf.crf_probs`."""
    from .checks import _check_probs

    img = _image_tensor(image, device)
    pr = _check_probs(probs, tuple(img.shape[-2:]))
    x = torch.from_numpy(np.ascontiguousarray(pr, dtype=np.float32)).to(device)
    with torch.no_grad():
        return par_refine(img, x, config, **overrides).cpu().numpy()


def par_labels(image, labels, n_labels: int, config: PARConfig | None = None, device="cpu",
               ignore_index: int | None = 255, **overrides) -> np.ndarray:
    """PAR on a hard label map (H, W) with values ``0 .. n_labels-1``: one-hot seeds, refined,
    argmax. Pixels equal to ``ignore_index`` start with equal scores for every label (they are
    filled in from their neighbours). Only the labels present in ``labels`` are propagated (an
    absent label cannot win the argmax), so the cost does not grow with ``n_labels``; a map with
    no label at all gives zeros. The counterpart of
    :func:`~transcam_nb.postprocess.crf.crf_labels`; returns uint8 (int64 above 256 labels)."""
    img = _image_tensor(image, device)
    lab = np.asarray(labels)
    if lab.shape != tuple(img.shape[-2:]):
        raise ValueError(f"labels have spatial shape {lab.shape}, the image {tuple(img.shape[-2:])}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got {lab.dtype}")
    lab = lab.astype(np.int64)
    ignore = (lab == ignore_index) if ignore_index is not None else np.zeros(lab.shape, bool)
    bad = (~ignore) & ((lab < 0) | (lab >= n_labels))
    if bad.any():
        raise ValueError(f"labels hold values {np.unique(lab[bad]).tolist()[:5]} outside 0..{n_labels - 1}")
    # only the labels that occur are propagated: an absent label's score never exceeds theirs
    present = np.unique(lab[~ignore])
    dtype = np.uint8 if n_labels <= 256 else np.int64
    if present.size == 0:
        return np.zeros(lab.shape, dtype)
    index = np.searchsorted(present, np.where(ignore, present[0], lab))
    seeds = F.one_hot(torch.from_numpy(index).to(device), int(present.size)).permute(2, 0, 1).float()
    seeds[:, torch.from_numpy(ignore).to(device)] = 1.0 / present.size
    with torch.no_grad():
        out = par_refine(img, seeds, config, **overrides).argmax(0).cpu().numpy()
    return present[out].astype(dtype)
