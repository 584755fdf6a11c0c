"""PSA's AffinityNet (docs/reference.md §7.1; Ahn & Kwak, CVPR 2018): affinity labels, pairs, loss, network.

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
   ``r-1`` at the *bottom*, left and right, so that every "to" position exists. (docs/reference.md
   §7.1; with offsets that point down (dy >= 0) the crop has to be at the
   bottom, and that is what the authors' ``ExtractAffinityLabelInRadius`` does.) A pair is
   bg-positive when both labels are 0, fg-positive when both are the same foreground class,
   negative when both are valid (not 255) and different.
3. **AffinityNet** (:class:`AffinityNet`). Three feature levels at output stride 8 → 1×1 convs
   without bias to 64 / 128 / 256 channels + ELU → concat (448) → 1×1 conv 448→448 + ELU. The
   affinity of two positions is ``exp(-mean_c |f_i - f_j|)``. Backbones: any timm model with
   ``features_only`` and ``output_stride=8`` (default ResNet-50), or the authors' wide
   ResNet-38d (``backbone="resnet38"``, :mod:`.resnet38d`). BatchNorm is frozen, the earliest
   layers too.
4. **Loss** (:func:`affinity_loss`): ``bg/4 + fg/4 + neg/2`` with ``-log(aff + 1e-5)`` on the
   positive pairs and ``-log(1 + 1e-5 - aff)`` on the negative ones.
5. **Training** (:mod:`.affinity_train`: :func:`train_affinity`, :class:`AffinityConfig`,
   :data:`AFFINITY_PRESETS`):
   poly-lr SGD, the reference's parameter groups and augmentation. *Quirk*: the authors'
   ``PolyOptimizer`` takes ``momentum=0.9`` but uses it only as the poly power and never passes
   it to SGD, so the reference trains **without momentum**. The ``paper`` preset reproduces this
   (``momentum=0.0``, ``poly_power=0.9``); set ``momentum=0.9`` to get what the code seems to mean.
6. **Random walk** (:func:`dense_affinity` here; ``transition_matrix`` and ``random_walk`` in
   :mod:`.random_walk`):
   ``T = colnorm(A^β)``, ``T ← T·T`` ``logt`` times (t = 2^logt = 128 steps), the
   (C+1)-channel CAM (channel 0 = constant 0.42) average-pooled to 1/8 is multiplied by ``T``,
   upsampled and arg-maxed (docs/reference.md §7.2 steps 1–8; step 9, the CRF, is optional here).

Everything is device-agnostic: pass ``device=`` or let :func:`transcam_nb.device.get_device`
choose; no CUDA device is hard-coded.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet38d import ResNet38d

__all__ = [
    "affinity_labels",
    "pair_offsets",
    "pair_indices",
    "extract_pair_labels",
    "pair_affinity",
    "dense_affinity",
    "affinity_loss",
    "AffinityNet",
    "load_affinity_checkpoint",
]

IGNORE = 255


# =============================================================================================
# 1. affinity labels
# =============================================================================================
def affinity_labels(la, ha, ignore: int = IGNORE):
    """Combine the la (τ = 0.60) and ha (τ = 0.25) CRF label maps (docs/reference.md §7.1).

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
    """Pair labels from an affinity label map at 1/8 resolution (docs/reference.md §7.1).

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
    """The dense symmetric affinity matrix used by the random walk (docs/reference.md §7.2 step 2).

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
    """PSA's affinity loss (docs/reference.md §7.1): ``bg/4 + fg/4 + neg/2``.

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


def _read_state_dict(path) -> dict:
    """The backbone weights file as a state dict (:func:`transcam_nb.models.read_state_dict`;
    MXNet ``.params`` files must be converted to a torch state dict first)."""
    from ..models.checkpoints import read_state_dict

    return read_state_dict(path, what="backbone weights")


class AffinityNet(nn.Module):
    """AffinityNet (docs/reference.md §7.1) on a stride-8 backbone.

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
        self.pretrained_path = None  # set by load_backbone: where the backbone's weights came from
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
        self.pretrained_path = str(path)
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
        """SGD parameter groups of the reference (docs/reference.md §7.1): backbone weights 1× lr
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


def load_affinity_checkpoint(model: AffinityNet, path, map_location="cpu") -> dict:
    """Load weights written by :func:`train_affinity` (the resumable ``affinity_last.pt`` or
    the final ``affinity_net.pt``) into ``model``; returns the file's dict."""
    from ..models.checkpoints import read_checkpoint

    obj = read_checkpoint(path, what="affinity checkpoint")
    sd = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    model.load_state_dict(sd)
    return obj
