"""PSA: AffinityNet and the random walk (REFERENCE.md §7.1–7.2; Ahn & Kwak, CVPR 2018).

TransCAM's seeds are refined, as in PSA/SEAM, by learning *pixel affinities* from the CAM
pseudo labels and then diffusing the CAM scores with a random walk over those affinities.

Pieces, in pipeline order:

1. **Affinity labels** (:func:`affinity_labels`). Two CRF label maps per image made with two
   background thresholds (:func:`transcam_nb.postprocess.crf.make_la_ha_labels`): *la*
   (τ = 0.60, confident foreground) and *ha* (τ = 0.25, confident background). Foreground
   comes from la, background needs both maps to agree, the rest is ignored (255).
2. **Pairs** (:func:`pair_offsets`, :func:`pair_indices`, :func:`extract_pair_labels`). Every
   position of the 1/8-resolution label map is paired with its neighbours within ``radius``
   (5): the offsets are the half disc ``(0, 1..r-1)`` and ``(dy = 1..r-1, |dx| <= r-1)`` with
   ``dx² + dy² < r²`` (34 offsets for r = 5). The "from" positions are the map cropped by
   ``r-1`` at the *bottom*, left and right, so that every "to" position exists. (REFERENCE.md
   §7.1 says "top/left/right"; with offsets that point down (dy >= 0) the crop has to be at the
   bottom, and that is what the authors' ``ExtractAffinityLabelInRadius`` does.) A pair is
   bg-positive when both labels are 0, fg-positive when both are the same foreground class,
   negative when both are valid (not 255) and different.
3. **AffinityNet** (:class:`AffinityNet`). Three feature levels at output stride 8 → 1×1 convs
   without bias to 64 / 128 / 256 channels + ELU → concat (448) → 1×1 conv 448→448 + ELU. The
   affinity of two positions is ``exp(-mean_c |f_i - f_j|)``. Backbones: any timm model with
   ``features_only`` and ``output_stride=8`` (default ResNet-50), or the authors' wide
   ResNet-38d (``backbone="resnet38"``). BatchNorm is frozen, the earliest layers too.
4. **Loss** (:func:`affinity_loss`): ``bg/4 + fg/4 + neg/2`` with ``-log(aff + 1e-5)`` on the
   positive pairs and ``-log(1 + 1e-5 - aff)`` on the negative ones.
5. **Training** (:func:`train_affinity`, :class:`AffinityConfig`, :data:`AFFINITY_PRESETS`):
   poly-lr SGD, the reference's parameter groups and augmentation. *Quirk*: the authors'
   ``PolyOptimizer`` takes ``momentum=0.9`` but uses it only as the poly power and never passes
   it to SGD, so the reference trains **without momentum**. The ``paper`` preset reproduces this
   (``momentum=0.0``, ``poly_power=0.9``); set ``momentum=0.9`` to get what the code seems to mean.
6. **Random walk** (:func:`dense_affinity`, :func:`transition_matrix`, :func:`random_walk`):
   ``T = colnorm(A^β)``, ``T ← T·T`` ``logt`` times (t = 2^logt = 128 steps), the
   (C+1)-channel CAM (channel 0 = constant 0.42) average-pooled to 1/8 is multiplied by ``T``,
   upsampled and arg-maxed (REFERENCE.md §7.2 steps 1–8; step 9, the CRF, is optional here).

Everything is device-agnostic: pass ``device=`` or let :func:`transcam_nb.device.get_device`
choose; no CUDA device is hard-coded.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..artifacts import atomic_path
from ..config import AFFINITY_PRESETS, AffinityConfig, get_affinity_preset  # noqa: F401  (defined in config)
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, color_jitter, normalize, random_crop
from ..data.voc import load_rgb
from ..pseudo import load_label_png

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "affinity_labels",
    "pair_offsets",
    "pair_indices",
    "extract_pair_labels",
    "pair_affinity",
    "dense_affinity",
    "affinity_loss",
    "ResNet38d",
    "AffinityNet",
    "AffinityConfig",
    "AFFINITY_PRESETS",
    "get_affinity_preset",
    "AffinityDataset",
    "train_affinity",
    "load_affinity_checkpoint",
    "transition_matrix",
    "random_walk",
    "prepare_image",
]

IGNORE = 255


# =============================================================================================
# 1. affinity labels
# =============================================================================================
def affinity_labels(la, ha, ignore: int = IGNORE):
    """Combine the la (τ = 0.60) and ha (τ = 0.25) CRF label maps (REFERENCE.md §7.1).

    Rules, in the reference's order: start from la; where la is background (0) set ``ignore``;
    then where la + ha = 0 (background in both) set 0. So foreground labels come from la,
    background needs both maps to agree, and "la says background, ha says foreground" is
    ignored. ``la`` / ``ha`` are integer maps of equal shape (numpy or torch, any leading
    dims) with values in 0..K; the result has the input's type and dtype uint8.

    Note: the reference tests ``la + ha == 0`` on uint8 arrays; for label values 0..K that is
    exactly "both are 0", which is what this function tests (no uint8 wrap-around).
    """
    is_torch = isinstance(la, torch.Tensor)
    if is_torch != isinstance(ha, torch.Tensor):
        raise TypeError("la and ha must both be numpy arrays or both torch tensors")
    if tuple(la.shape) != tuple(ha.shape):
        raise ValueError(f"la and ha must have the same shape, got {tuple(la.shape)} and {tuple(ha.shape)}")
    for name, x in (("la", la), ("ha", ha)):
        if is_torch:
            if x.is_floating_point() or x.is_complex():
                raise TypeError(f"{name} must be an integer label map, got {x.dtype}")
        elif not (np.issubdtype(np.asarray(x).dtype, np.integer)):
            raise TypeError(f"{name} must be an integer label map, got {np.asarray(x).dtype}")
    if is_torch:
        out = la.clone().to(torch.uint8)
        out[la == 0] = ignore
        out[(la == 0) & (ha == 0)] = 0
    else:
        la, ha = np.asarray(la), np.asarray(ha)
        out = la.astype(np.uint8, copy=True)
        out[la == 0] = ignore
        out[(la == 0) & (ha == 0)] = 0
    return out


# =============================================================================================
# 2. pairs within a radius
# =============================================================================================
def pair_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """The "to − from" offsets (dy, dx) of the pairs within ``radius`` (half disc, no repeats).

    ``(0, dx)`` for dx = 1..r-1, then ``(dy, dx)`` for dy = 1..r-1 and dx = -(r-1)..r-1 with
    dx² + dy² < r², in this order (34 offsets for r = 5). Each unordered pair of distinct
    positions closer than ``r`` appears once (the opposite offset is never listed).
    """
    if not isinstance(radius, (int, np.integer)) or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius!r}")
    r = int(radius)
    offs = [(0, dx) for dx in range(1, r)]
    for dy in range(1, r):
        for dx in range(-r + 1, r):
            if dx * dx + dy * dy < r * r:
                offs.append((dy, dx))
    return offs


def _crop_size(h: int, w: int, radius: int) -> tuple[int, int]:
    rf = radius - 1
    ch, cw = h - rf, w - 2 * rf
    if ch < 1 or cw < 1:
        raise ValueError(
            f"a {h}x{w} map is too small for pairs within radius {radius}: need height >= {radius} "
            f"and width >= {2 * radius - 1} (at 1/8 of the image: image >= {8 * radius}x{8 * (2 * radius - 1)} px)"
        )
    return ch, cw


def pair_indices(h: int, w: int, radius: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) indices of the pairs on an ``h × w`` map.

    Returns ``ind_from`` (int64, [n_from]) and ``ind_to`` (int64, [n_offsets, n_from]). The
    "from" positions are rows ``0 .. h-r`` and columns ``r-1 .. w-r`` (the map cropped by
    ``r-1`` at the bottom, left and right); ``ind_to[k]`` is ``from + pair_offsets(r)[k]``.
    """
    offs = pair_offsets(radius)
    ch, cw = _crop_size(h, w, radius)
    rf = radius - 1
    full = torch.arange(h * w, dtype=torch.int64).view(h, w)
    ind_from = full[:ch, rf : rf + cw].reshape(-1)
    ind_to = torch.stack([full[dy : dy + ch, rf + dx : rf + dx + cw].reshape(-1) for dy, dx in offs])
    return ind_from, ind_to


def _shifted(x: torch.Tensor, radius: int):
    """Yield (from, to) views of the last two dims of ``x`` for every offset (no copies)."""
    h, w = x.shape[-2:]
    ch, cw = _crop_size(h, w, radius)
    rf = radius - 1
    src = x[..., :ch, rf : rf + cw]
    for dy, dx in pair_offsets(radius):
        yield src, x[..., dy : dy + ch, rf + dx : rf + dx + cw]


def extract_pair_labels(label_small, radius: int = 5, ignore: int = IGNORE):
    """Pair labels from an affinity label map at 1/8 resolution (REFERENCE.md §7.1).

    ``label_small``: integer map [h, w] or batch [B, h, w] (numpy or torch) with 0 =
    background, 1..K = classes, ``ignore`` = no label. Returns three float32 torch tensors
    ``(bg_pos, fg_pos, neg)`` of shape [(B,) n_offsets, n_from] (order of :func:`pair_indices`):

    * bg_pos: both labels 0;
    * fg_pos: same label, not 0, both valid;
    * neg: both valid and different.
    """
    lab = torch.as_tensor(np.asarray(label_small)) if not isinstance(label_small, torch.Tensor) else label_small
    if lab.is_floating_point():
        raise TypeError(f"label_small must be an integer label map, got {lab.dtype}")
    if lab.dim() not in (2, 3):
        raise ValueError(f"label_small must be [h, w] or [B, h, w], got shape {tuple(lab.shape)}")
    lab = lab.long()
    froms, tos = [], []
    for f, t in _shifted(lab, radius):
        froms.append(f.flatten(-2))
        tos.append(t.flatten(-2))
    lf = froms[0].unsqueeze(-2)  # [(B,) 1, n_from]
    lt = torch.stack(tos, dim=-2)  # [(B,) n_off, n_from]
    valid = (lf != ignore) & (lt != ignore)
    same = lf == lt
    bg = same & (lf == 0)
    fg = same & (lf != 0) & valid
    neg = ~same & valid
    return bg.float(), fg.float(), neg.float()


# =============================================================================================
# 3. affinities from features
# =============================================================================================
def pair_affinity(feats: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Affinities ``exp(-mean_c |f_i - f_j|)`` of all pairs within ``radius``.

    ``feats``: [B, C, h, w] (or [C, h, w]). Returns [B, n_offsets, n_from] (or [n_offsets,
    n_from]) in the order of :func:`pair_indices`. Computed with shifted views, one offset at
    a time (no [B, C, n_offsets, n_from] gather tensor).
    """
    if feats.dim() not in (3, 4):
        raise ValueError(f"feats must be [B, C, h, w] or [C, h, w], got shape {tuple(feats.shape)}")
    cdim = -3
    out = [torch.exp(-torch.mean(torch.abs(t - f), dim=cdim)).flatten(-2) for f, t in _shifted(feats, radius)]
    return torch.stack(out, dim=-2)


def dense_affinity(feats: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """The dense symmetric affinity matrix used by the random walk (REFERENCE.md §7.2 step 2).

    ``feats``: [C, h, w] or [1, C, h, w] features at 1/8 resolution. Returns [h·w, h·w] with
    ``A[i, j] = A[j, i] = exp(-mean|f_i - f_j|)`` for the pairs of :func:`pair_indices`, 1 on
    the diagonal and 0 elsewhere (a dense tensor: at 1/8 scale a VOC image gives ~3000² floats).
    As in the reference, pairs whose both ends lie in the bottom / side margins of width r-1
    that the "from" crop leaves out are absent.
    """
    if feats.dim() == 4:
        if feats.shape[0] != 1:
            raise ValueError(f"dense_affinity takes one image, got a batch of {feats.shape[0]}")
        feats = feats[0]
    if feats.dim() != 3:
        raise ValueError(f"feats must be [C, h, w], got shape {tuple(feats.shape)}")
    h, w = feats.shape[-2:]
    aff = pair_affinity(feats, radius)  # [n_off, n_from]
    ind_from, ind_to = pair_indices(h, w, radius)
    ind_from = ind_from.to(feats.device).unsqueeze(0).expand_as(ind_to.to(feats.device))
    ind_to = ind_to.to(feats.device)
    n = h * w
    A = torch.zeros(n, n, dtype=aff.dtype, device=feats.device)
    A[ind_from.reshape(-1), ind_to.reshape(-1)] = aff.reshape(-1)
    A[ind_to.reshape(-1), ind_from.reshape(-1)] = aff.reshape(-1)
    A.diagonal().fill_(1.0)
    return A


# =============================================================================================
# 4. loss
# =============================================================================================
def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor):
    """PSA's affinity loss (REFERENCE.md §7.1): ``bg/4 + fg/4 + neg/2``.

    * bg = mean over bg-positive pairs of ``-log(aff + 1e-5)``
    * fg = mean over fg-positive pairs of ``-log(aff + 1e-5)``
    * neg = mean over negative pairs of ``-log(1 + 1e-5 - aff)``

    Means are over all pairs of the whole batch, computed as ``sum / (count + 1e-5)`` as the
    reference does (so an empty set contributes 0). All inputs share one shape
    (e.g. [B, n_offsets, n_from]). Returns ``(total, {"bg": .., "fg": .., "neg": ..})``.
    """
    shapes = {tuple(t.shape) for t in (aff, bg_pos, fg_pos, neg)}
    if len(shapes) != 1:
        raise ValueError(f"aff, bg_pos, fg_pos and neg must share one shape, got {sorted(shapes)}")
    eps = 1e-5
    pos_term = -torch.log(aff + eps)
    neg_term = -torch.log(1.0 + eps - aff)
    bg = torch.sum(bg_pos * pos_term) / (bg_pos.sum() + eps)
    fg = torch.sum(fg_pos * pos_term) / (fg_pos.sum() + eps)
    ng = torch.sum(neg * neg_term) / (neg.sum() + eps)
    total = bg / 4 + fg / 4 + ng / 2
    return total, {"bg": bg.detach(), "fg": fg.detach(), "neg": ng.detach()}


# =============================================================================================
# 5. networks
# =============================================================================================
class _Block(nn.Module):
    """Pre-activation residual block of ResNet-38d: BN-ReLU → 3×3 → BN-ReLU → 3×3 (+ shortcut,
    a 1×1 conv on the BN-ReLU'd input when the shape changes). Parameter names follow the
    converted MXNet weights used by PSA/SEAM (``bn_branch2a``, ``conv_branch2a``, ...)."""

    def __init__(self, cin, cmid, cout, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        fd = dilation if first_dilation is None else first_dilation
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, padding=fd, dilation=fd, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn_branch2a(x))
        short = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return short + y, pre


class _Bottleneck(nn.Module):
    """Pre-activation bottleneck of ResNet-38d (b6, b7): 1×1 → 3×3 (dilated) → 1×1 with
    channel widths out/4, out/2, out and Dropout2d before the last two convs."""

    def __init__(self, cin, cout, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn_branch2a(x))
        short = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return short + y, pre


class ResNet38d(nn.Module):
    """The wide ResNet-38 ("resnet38d", Wu et al. 2019) of PSA / SEAM / TransCAM's PSA step.

    Output stride 8: conv1a (3×3, 64, stride 1) → b2 (128, /2) ×3 → b3 (256, /4) ×3 → b4 (512,
    /8) ×6 → b5 (1024, dilation 2) ×3 → b6 (bottleneck 2048, dilation 4, dropout 0.3) → b7
    (bottleneck 4096, dilation 4, dropout 0.5) → bn7 + ReLU (REFERENCE.md §7.1).

    ``forward`` returns the three feature maps AffinityNet uses: "conv4" (the BN-ReLU'd input
    of b5, 512 ch), "conv5" (the BN-ReLU'd input of b6, 1024 ch) and "conv6" (the final
    features after bn7 + ReLU, 4096 ch), all at 1/8 of the input. ``channels`` lists them.
    ImageNet weights come as MXNet ``.params`` that must be converted to a torch state dict
    first (the authors' converter needs mxnet); :class:`AffinityNet` loads such a file.
    """

    channels = (512, 1024, 4096)
    frozen_prefixes = ("conv1a", "b2.", "b2_1.", "b2_2.")  # no gradient in the reference

    def __init__(self):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = _Block(64, 128, 128, stride=2)
        self.b2_1 = _Block(128, 128, 128)
        self.b2_2 = _Block(128, 128, 128)
        self.b3 = _Block(128, 256, 256, stride=2)
        self.b3_1 = _Block(256, 256, 256)
        self.b3_2 = _Block(256, 256, 256)
        self.b4 = _Block(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", _Block(512, 512, 512))
        self.b5 = _Block(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = _Block(1024, 512, 1024, dilation=2)
        self.b5_2 = _Block(1024, 512, 1024, dilation=2)
        self.b6 = _Bottleneck(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = _Bottleneck(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def forward(self, x):
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"):
            x, _ = getattr(self, name)(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return [conv4, conv5, conv6]


def _read_state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} do not exist (pretrained_path expects a torch state-dict file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"could not read {path} as a torch state dict with weights_only=True "
            f"(MXNet .params files must be converted to a torch state dict first): {exc}"
        ) from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


class AffinityNet(nn.Module):
    """AffinityNet (REFERENCE.md §7.1) on a stride-8 backbone.

    Parameters
    ----------
    backbone:
        ``"resnet38"`` for the authors' wide ResNet-38d, or any timm model name that supports
        ``features_only=True, output_stride=8`` (default ``"resnet50"``; ``"resnet101"``,
        ``"resnet18"`` for tests). Three feature levels are used, analogous to the reference's
        conv4 / conv5 / conv6: timm levels ``out_indices`` (default (2, 3, 4): ResNet layer2,
        layer3, layer4, all at stride 8 thanks to dilation).
    output_stride:
        8, as the reference (the affinity labels, padding and pooling use the same stride).
    pretrained_path:
        optional torch state-dict file with ImageNet weights for the backbone, loaded with
        ``torch.load(weights_only=True)`` and ``strict=False`` (missing keys are reported).
        timm never downloads anything here (``pretrained=False``).
    freeze_early:
        no gradient for the earliest layers, as the reference freezes conv1a + b2 (ResNet-38d)
        — for timm models everything before the first used feature level (ResNet: conv1,
        bn1, layer1).
    freeze_bn:
        every BatchNorm is kept in eval mode and gets no gradient (the reference does this).

    ``forward(x)`` maps a normalised image [B, 3, H, W] (H, W multiples of 8) to affinity
    features [B, 448, H/8, W/8]. :meth:`pair_affinity` and :meth:`dense_affinity` turn images
    into affinities.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        output_stride: int = 8,
        pretrained_path: str | os.PathLike | None = None,
        out_indices: Sequence[int] = (2, 3, 4),
        freeze_early: bool = True,
        freeze_bn: bool = True,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.stride = int(output_stride)
        self.freeze_bn = freeze_bn
        if backbone == "resnet38":
            if self.stride != 8:
                raise ValueError(f"resnet38 has output stride 8, got output_stride={output_stride}")
            self.backbone = ResNet38d()
            chans = list(ResNet38d.channels)
            frozen = [n for n, _ in self.backbone.named_parameters() if n.startswith(ResNet38d.frozen_prefixes)]
        else:
            import timm

            try:
                self.backbone = timm.create_model(
                    backbone, pretrained=False, features_only=True, output_stride=self.stride, out_indices=tuple(out_indices)
                )
            except Exception as exc:
                raise ValueError(
                    f"timm could not build backbone {backbone!r} with features_only=True, "
                    f"output_stride={self.stride}, out_indices={tuple(out_indices)}: {exc}"
                ) from exc
            chans = list(self.backbone.feature_info.channels())
            if len(chans) != 3:
                raise ValueError(f"AffinityNet needs exactly 3 feature levels, out_indices={tuple(out_indices)} gave {len(chans)}")
            red = self.backbone.feature_info.reduction()
            if any(r != self.stride for r in red):
                raise ValueError(f"backbone {backbone!r}: feature levels have strides {red}, need all {self.stride}")
            first = self.backbone.feature_info.module_name()[0].split(".")[0]
            frozen_mods = []
            for name, _ in self.backbone.named_children():
                if name == first:
                    break
                frozen_mods.append(name + ".")
            frozen = [n for n, _ in self.backbone.named_parameters() if n.startswith(tuple(frozen_mods))]
        self.feature_channels = tuple(chans)
        if pretrained_path is not None:
            self.load_backbone(pretrained_path)

        # new layers (the reference's f8_3, f8_4, f8_5, f9)
        self.f8_3 = nn.Conv2d(chans[0], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(chans[1], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(chans[2], 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.new_layers = nn.ModuleList([self.f8_3, self.f8_4, self.f8_5, self.f9])

        if freeze_early:
            params = dict(self.backbone.named_parameters())
            for n in frozen:
                params[n].requires_grad_(False)
        self.frozen_parameter_names = tuple(frozen) if freeze_early else ()
        if freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
            self.train(self.training)

    # -- weights ---------------------------------------------------------------------------
    def load_backbone(self, path) -> tuple[list[str], list[str]]:
        """Load ImageNet weights for the backbone from a torch state-dict file (strict=False).
        Returns (missing, unexpected) keys; raises when no key matches."""
        sd = _read_state_dict(path)
        own = self.backbone.state_dict()
        usable = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        if not usable:
            raise ValueError(
                f"{path}: none of its {len(sd)} tensors matches the {self.backbone_name} backbone "
                f"(example keys: {list(sd)[:3]} vs expected {list(own)[:3]})"
            )
        missing, unexpected = self.backbone.load_state_dict(usable, strict=False)
        bad_shape = [k for k in sd if k in own and k not in usable]
        if missing or bad_shape:
            warnings.warn(
                f"{path}: {len(missing)} backbone tensors missing (e.g. {missing[:3]}), "
                f"{len(bad_shape)} with a different shape (e.g. {bad_shape[:3]}); those keep their initialisation",
                stacklevel=2,
            )
        return list(missing), [k for k in sd if k not in own]

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            from ..models import batchnorm_eval

            batchnorm_eval(self.backbone)
        return self

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"AffinityNet expects a normalised image batch [B, 3, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"image height and width must be multiples of {self.stride}, got {tuple(x.shape[-2:])}")
        c4, c5, c6 = self.backbone(x)
        f = torch.cat([F.elu(self.f8_3(c4)), F.elu(self.f8_4(c5)), F.elu(self.f8_5(c6))], dim=1)
        return F.elu(self.f9(f))

    def pair_affinity(self, x: torch.Tensor, radius: int = 5) -> torch.Tensor:
        """Affinities of the pairs within ``radius`` for an image batch: [B, n_offsets, n_from]."""
        return pair_affinity(self(x), radius)

    @torch.no_grad()
    def dense_affinity(self, x: torch.Tensor, radius: int = 5) -> torch.Tensor:
        """The [hw, hw] random-walk affinity of one normalised, stride-padded image [1, 3, H, W]."""
        return dense_affinity(self(x), radius)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """SGD parameter groups of the reference (REFERENCE.md §7.1): backbone weights 1× lr
        with weight decay, backbone biases / 1-d parameters 2× lr without, new-layer weights
        10×, new-layer biases 20× (none exist). Frozen parameters are left out. Each group
        carries ``lr_mult`` for the poly schedule; empty groups are dropped."""
        new_ids = {id(p) for p in self.new_layers.parameters()}
        groups = [
            dict(params=[], lr_mult=1.0, weight_decay=weight_decay, name="backbone_weight"),
            dict(params=[], lr_mult=2.0, weight_decay=0.0, name="backbone_bias"),
            dict(params=[], lr_mult=10.0, weight_decay=weight_decay, name="new_weight"),
            dict(params=[], lr_mult=20.0, weight_decay=0.0, name="new_bias"),
        ]
        for p in self.parameters():
            if not p.requires_grad:
                continue
            k = (2 if id(p) in new_ids else 0) + (0 if p.dim() > 1 else 1)
            groups[k]["params"].append(p)
        out = [g for g in groups if g["params"]]
        for g in out:
            g["lr"] = lr * g["lr_mult"]
        return out


# =============================================================================================
# 6. training
# =============================================================================================
def _load_rgb(x, what: str) -> "np.ndarray":
    """A path (read by :func:`transcam_nb.data.voc.load_rgb`) or a uint8 (H, W, 3) array."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist")
        return np.array(load_rgb(p))
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must be a path or a uint8 (H, W, 3) array, got {a.dtype} {a.shape}")
    return a


def _load_label(x, what: str) -> "np.ndarray":
    """A path (an 8-bit L/P PNG, read by :func:`transcam_nb.pseudo.load_label_png`) or an
    integer (H, W) array."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist")
        try:
            return load_label_png(p)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    a = np.asarray(x)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be a path or an integer (H, W) array, got {a.dtype} {a.shape}")
    return a.astype(np.uint8)


class AffinityDataset(torch.utils.data.Dataset):
    """Training items for AffinityNet (REFERENCE.md §7.1 augmentation).

    ``items``: a sequence of ``(image, la, ha)``, each a path or an array (uint8 H×W×3 RGB;
    uint8 H×W label maps, e.g. the PNGs written from :func:`make_la_ha_labels`). Per item:
    colour jitter (0.3, 0.3, 0.3, 0.1) on the image → a joint random crop ``crop_size`` of image
    and both label maps, zero-padded when the image is smaller → joint horizontal flip →
    ImageNet normalisation → labels downscaled ×1/8 by nearest neighbour (every 8th pixel) →
    :func:`affinity_labels`. There is no random rescaling (as the reference). Padding is
    background in both maps, so padded areas become background pairs (reference behaviour).

    Returns ``(image float32 [3, crop, crop], label uint8 [crop/8, crop/8])``. The randomness
    of item ``i`` in epoch ``e`` comes from ``np.random.default_rng([seed, e, i])`` (call
    :meth:`set_epoch`), so it does not depend on DataLoader workers and resumes exactly.
    """

    def __init__(
        self,
        items: Sequence[tuple],
        crop_size: int = 448,
        color_jitter: tuple | None = (0.3, 0.3, 0.3, 0.1),
        flip: bool = True,
        seed: int = 0,
        label_stride: int = 8,
    ):
        if crop_size % label_stride:
            raise ValueError(f"crop_size must be a multiple of {label_stride}, got {crop_size}")
        self.items = list(items)
        for i, it in enumerate(self.items):
            if len(it) != 3:
                raise ValueError(f"item {i} must be (image, la, ha), got {len(it)} entries")
        self.crop_size = int(crop_size)
        self.color_jitter = tuple(color_jitter) if color_jitter else None
        self.flip = flip
        self.seed = int(seed)
        self.label_stride = int(label_stride)
        self.epoch = 0

    @classmethod
    def from_folders(cls, image_dir, la_dir, ha_dir, ids: Sequence[str] | None = None, image_ext: str = ".jpg", **kw):
        """Items ``<image_dir>/<id><image_ext>``, ``<la_dir>/<id>.png``, ``<ha_dir>/<id>.png``
        (the authors' ``out_crf_0.60`` / ``out_crf_0.25`` layout); ``ids`` default: all PNGs of la_dir."""
        image_dir, la_dir, ha_dir = Path(image_dir), Path(la_dir), Path(ha_dir)
        for d in (image_dir, la_dir, ha_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"folder {d} does not exist")
        if ids is None:
            ids = sorted(p.stem for p in la_dir.glob("*.png"))
        if not ids:
            raise ValueError(f"no label PNGs found in {la_dir}")
        items = [(image_dir / f"{i}{image_ext}", la_dir / f"{i}.png", ha_dir / f"{i}.png") for i in ids]
        return cls(items, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        img_src, la_src, ha_src = self.items[index]
        img = _load_rgb(img_src, f"image of item {index}")
        la = _load_label(la_src, f"la label of item {index}")
        ha = _load_label(ha_src, f"ha label of item {index}")
        if la.shape != img.shape[:2] or ha.shape != img.shape[:2]:
            raise ValueError(
                f"item {index}: image {img.shape[:2]}, la {la.shape} and ha {ha.shape} must have the same size"
            )
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.color_jitter:  # torchvision's ColorJitter(b, c, s, h), draws from rng
            from PIL import Image

            img = np.asarray(color_jitter(Image.fromarray(img), rng, *self.color_jitter))
        # joint random crop, zero padded (PSA RandomCrop semantics)
        stack = np.concatenate([img, la[..., None], ha[..., None]], axis=-1)
        (out,) = random_crop([stack], [0], self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        x = normalize(out[..., :3])  # [3, crop, crop] float32
        s = self.label_stride
        lab = affinity_labels(out[::s, ::s, 3], out[::s, ::s, 4])
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(lab))


def load_affinity_checkpoint(model: AffinityNet, path, map_location="cpu") -> dict:
    """Load weights written by :func:`train_affinity` (the resumable ``affinity_last.pt`` or
    the final ``affinity_net.pt``) into ``model``; returns the file's dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"affinity checkpoint {path} does not exist")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    sd = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    model.load_state_dict(sd)
    return obj


def train_affinity(
    model: AffinityNet,
    dataset: torch.utils.data.Dataset,
    cfg: AffinityConfig | str = "paper",
    out_dir: str | os.PathLike = "runs/affinity",
    device: str | torch.device | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train AffinityNet as ``train_aff.py`` (REFERENCE.md §7.1).

    Poly learning rate ``lr · mult · (1 - step/max_step)^poly_power`` with SGD (``momentum``
    from the config: 0.0 in ``paper``, the reference quirk), parameter groups of
    :meth:`AffinityNet.param_groups`, ``max_step = len(dataset) // batch_size · epochs``
    (drop_last), the loss of :func:`affinity_loss` on the pairs within ``cfg.radius``.
    ``dataset`` yields ``(image [3, S, S], affinity label [S/8, S/8])`` (e.g.
    :class:`AffinityDataset`); it is shuffled with a generator seeded by ``(seed, epoch)``.

    Writes ``out_dir/affinity_last.pt`` (resumable: model, optimizer, step, history, RNG state)
    every ``cfg.save_every`` steps and at the end, and ``out_dir/affinity_net.pt`` (weights
    only) when training is complete; both atomically. With ``resume=True`` an existing
    ``affinity_last.pt`` is continued. ``stop_after`` ends this call after that many steps
    (for time-limited sessions; a later call resumes). Returns ``{"step", "max_step",
    "history", "last", "final"}`` (``final`` is None until training is complete).
    """
    from tqdm.auto import tqdm

    from ..device import get_device

    if isinstance(cfg, str):
        cfg = get_affinity_preset(cfg)
    device = get_device(device if device is not None else (None if cfg.device == "auto" else cfg.device))
    out_dir = Path(out_dir)
    last_path, final_path = out_dir / "affinity_last.pt", out_dir / "affinity_net.pt"
    n = len(dataset)
    spe = n // cfg.batch_size
    if spe < 1:
        raise ValueError(f"the dataset has {n} items, fewer than one batch of {cfg.batch_size}")
    ds_stride = getattr(dataset, "label_stride", None)
    if ds_stride is not None and ds_stride != model.stride:
        raise ValueError(f"dataset labels are at 1/{ds_stride} but the model's output stride is {model.stride}")
    max_step = spe * cfg.epochs

    model.to(device)
    groups = model.param_groups(cfg.lr, cfg.weight_decay)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if resume and last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        if int(ck.get("max_step", max_step)) != max_step:
            raise ValueError(
                f"{last_path} was written for {ck.get('max_step')} steps but this run has {max_step} "
                "(different dataset size, batch size or epochs): use another out_dir or resume=False"
            )
        old_cfg = ck.get("config") or {}
        changed = sorted(k for k, v in cfg.to_dict().items() if k in old_cfg and old_cfg[k] != v and k != "device")
        if changed:
            warnings.warn(f"resuming {last_path} with changed settings {changed}", stacklevel=2)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, history = int(ck["step"]), list(ck["history"])
        torch.set_rng_state(ck["rng_cpu"])
        if device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ck["rng_cuda"], device)
    else:
        torch.manual_seed(cfg.seed)

    def save_last():
        state = dict(
            model=model.state_dict(),
            optimizer=opt.state_dict(),
            step=step,
            max_step=max_step,
            history=history,
            config=cfg.to_dict(),
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        )
        with atomic_path(last_path) as tmp:
            torch.save(state, tmp)

    model.train()
    done_here = 0
    bar = tqdm(total=max_step, initial=step, desc="AffinityNet", disable=not progress)
    try:
        while step < max_step and (stop_after is None or done_here < stop_after):
            epoch, skip = divmod(step, spe)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)[: spe * cfg.batch_size].view(spe, cfg.batch_size).tolist()
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=order[skip:], num_workers=cfg.num_workers, pin_memory=device.type == "cuda"
            )
            for img, lab in loader:
                if step >= max_step or (stop_after is not None and done_here >= stop_after):
                    break
                scale = (1 - step / max_step) ** cfg.poly_power
                for gr in opt.param_groups:
                    gr["lr"] = cfg.lr * gr["lr_mult"] * scale
                img = img.to(device, non_blocking=True)
                lab = lab.to(device, non_blocking=True)
                aff = model.pair_affinity(img, cfg.radius)
                bg, fg, neg = extract_pair_labels(lab, cfg.radius)
                loss, parts = affinity_loss(aff, bg, fg, neg)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"affinity loss is {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                done_here += 1
                rec = {"step": step, "loss": loss.item(), **{k: float(v) for k, v in parts.items()}, "lr": cfg.lr * scale}
                history.append(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if cfg.save_every and step % cfg.save_every == 0 and step < max_step:
                    save_last()
    finally:
        bar.close()
    save_last()
    final = None
    if step >= max_step:
        with atomic_path(final_path) as tmp:
            torch.save(model.state_dict(), tmp)
        final = final_path
    return {"step": step, "max_step": max_step, "history": history, "last": last_path, "final": final}


# =============================================================================================
# 7. random walk
# =============================================================================================
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
    """Random-walk transition matrix (REFERENCE.md §7.2 steps 3–5).

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
    to multiples of ``stride`` (REFERENCE.md §7.2 step 1; the padding is 0 after normalisation)."""
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
    affinity: torch.Tensor | AffinityNet,
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
    device=None,
    return_scores: bool = False,
):
    """PSA random walk of normalised CAMs over affinities (REFERENCE.md §7.2).

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
        colour, as the reference) before cropping; needs ``image``.
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
    from .crf import _check_cams, crf_labels

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
        labels = crf_labels(padded, labels, num_classes + 1, preset=crf_preset)
    labels = labels[:H, :W]
    if return_scores:
        return labels, walked.cpu()
    return labels
