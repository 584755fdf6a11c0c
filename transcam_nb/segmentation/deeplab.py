"""DeepLab on a timm backbone: the segmentation network of the last pipeline stage.

The authors train **DeepLab-v1 ("LargeFOV") on a ResNet-38** at output stride 8, on the
pseudo labels produced by TransCAM + PSA (docs/reference.md §8). This module builds the same head
on any timm CNN that supports ``features_only=True, output_stride=8`` (the ResNet family does);
the default backbone is timm's ``resnet50`` (the paper preset uses ``resnet101``, see
:mod:`transcam_nb.segmentation.train`). ResNet-38 itself is not in timm and its MXNet
ImageNet weights are not loadable here; this is the one documented deviation of the stage.

Two heads:

``"largefov"`` (the reference, docs/reference.md §8)
    3×3 conv, dilation 12, C_backbone→512, no bias → BN → ReLU → 1×1 conv 512→512 (no bias)
    → BN → ReLU → Dropout(0.5) → 1×1 conv 512→classes with bias. The reference's head BN
    momentum is 0.0003 (PyTorch convention), kept as the default ``head_bn_momentum``.
``"aspp"`` (DeepLab-v3 style, an extra option)
    parallel 1×1 conv and three dilated 3×3 convs with rates (6, 12, 18) × 16 / output_stride
    (so 12/24/36 at OS 8, the v3 paper's doubling) plus an image-pooling branch, each 256
    channels with BN + ReLU; concatenation → 1×1 projection (256, BN, ReLU, Dropout 0.5) →
    3×3 conv 256 (BN, ReLU) → 1×1 conv → classes with bias. The image-pooling BN needs a
    training batch of at least 2.

The logits are upsampled bilinearly **with align_corners=True** (as the reference) to the
input size, so ``model(x)`` has the spatial size of ``x`` for any (non-square) input.

Like the reference, the backbone's BatchNorm layers can be frozen (kept in eval mode, no
gradient) and the stem conv frozen too (the reference freezes ResNet-38's ``conv1a``).
:meth:`DeepLab.param_groups` returns the reference's SGD groups: backbone weights 1× lr,
backbone biases 2× lr (no weight decay), head weights 10×, head biases 20× (no weight decay).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeepLab", "ConformerBackbone", "LargeFOVHead", "ASPPHead", "load_backbone_weights", "HEADS"]

HEADS = ("largefov", "aspp")

# prefixes some checkpoint writers put in front of every key
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
# classifier keys of an ImageNet model that a features_only backbone does not have
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.", "head_fc.")


class LargeFOVHead(nn.Module):
    """DeepLab-v1 LargeFOV head exactly as docs/reference.md §8 lists it."""

    def __init__(self, in_channels: int, num_classes: int, mid_channels: int = 512, dilation: int = 12,
                 bn_momentum: float = 0.0003, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels, momentum=bn_momentum)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return self.classifier(self.dropout(x))


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1, bn_momentum: float = 0.1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    )


class ASPPHead(nn.Module):
    """DeepLab-v3-style ASPP head (Chen et al. 2017): 1×1 + three atrous 3×3 + image pooling."""

    def __init__(self, in_channels: int, num_classes: int, rates=(12, 24, 36), channels: int = 256,
                 bn_momentum: float = 0.1, dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1, bn_momentum=bn_momentum)]
            + [_conv_bn_relu(in_channels, channels, 3, dilation=r, bn_momentum=bn_momentum) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels, 1, bn_momentum=bn_momentum))
        n = len(self.branches) + 1
        self.project = nn.Sequential(_conv_bn_relu(n * channels, channels, 1, bn_momentum=bn_momentum), nn.Dropout(dropout))
        self.refine = _conv_bn_relu(channels, channels, 3, bn_momentum=bn_momentum)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = [b(x) for b in self.branches]
        pooled = self.pool(x)
        outs.append(pooled.expand(-1, -1, h, w))  # bilinear upsampling of a 1×1 map is a broadcast
        x = self.project(torch.cat(outs, dim=1))
        return self.classifier(self.refine(x))


def _read_state_dict(path: str | os.PathLike) -> dict:
    """A weights file (``.pth``/``.pt``/``.bin``/``.safetensors``) as a state dict, read by the
    package's one reader :func:`transcam_nb.models.read_state_dict`."""
    from ..models.checkpoints import read_state_dict

    return read_state_dict(path, what="backbone weights")


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> dict:
    """Load ImageNet weights of the *classification* model (e.g. timm's ``resnet101``
    checkpoint) into a ``features_only`` backbone. Common key prefixes (``module.``, ``model.``,
    ``backbone.``, ``encoder.``) are stripped and classifier keys (``fc.``, ``head.`` …) dropped.
    Any other mismatch (a backbone key missing from the file, an unexpected non-classifier key,
    a shape difference) raises a ``ValueError`` naming the file and the first offending keys.
    Returns ``{"loaded": n, "ignored": [classifier keys]}``.
    """
    sd = _read_state_dict(path)
    own = backbone.state_dict()
    clean = {}
    for k, v in sd.items():
        k2 = k
        changed = True
        while changed:
            changed = False
            for p in _STRIP_PREFIXES:
                if k2.startswith(p) and k2 not in own:
                    k2, changed = k2[len(p):], True
        clean[k2] = v
    ignored = sorted(k for k in clean if k not in own and k.startswith(_CLASSIFIER_PREFIXES))
    unexpected = sorted(k for k in clean if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in clean and not k.endswith("num_batches_tracked"))
    shape_bad = sorted(k for k in own if k in clean and tuple(clean[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape_bad:
        msg = [f"backbone weights {str(path)!r} do not match the backbone:"]
        if missing:
            msg.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        if shape_bad:
            msg.append("shape mismatch for " + ", ".join(
                f"{k}: file {tuple(clean[k].shape)} vs model {tuple(own[k].shape)}" for k in shape_bad[:5]))
        msg.append("(expected an ImageNet checkpoint of the same timm architecture)")
        raise ValueError(" ".join(msg))
    backbone.load_state_dict({k: v for k, v in clean.items() if k in own}, strict=False)
    return {"loaded": sum(k in own for k in clean), "ignored": ignored}


class _FeatureInfo:
    """The two facts DeepLab reads from a timm ``features_only`` backbone."""

    def __init__(self, channels: int, reduction: int):
        self._c, self._r = int(channels), int(reduction)

    def channels(self) -> list[int]:
        return [self._c]

    def reduction(self) -> list[int]:
        return [self._r]


class ConformerBackbone(nn.Module):
    """A TransCAM network (:func:`transcam_nb.models.create_model` name plus ``model_args``) as
    DeepLab's backbone: the last map of its CNN branch, output stride 16 (the patch size; the
    Conformer has no dilated variant). Both branches run, as in the classifier. An input whose
    sides are not multiples of 16 is resized to the nearest multiple (DeepLab resizes its logits
    back to the input). The classification heads are kept only so that the classifier's
    checkpoint loads strictly; they are frozen and unused.

    This is how the tiny profile gives DeepLab a pretrained start: the shipped formula-driven
    pretraining (``package:tiny_pretrained.pt``) plays the part ImageNet plays for the paper.
    """

    def __init__(self, name: str, model_args: dict | None = None):
        super().__init__()
        from ..models import create_model

        self.net = create_model(name, **dict(model_args or {}))
        for head in (self.net.conv_cls_head, self.net.trans_cls_head):
            head.requires_grad_(False)
        channels = (self.net.conv_cls_head.in_channels if isinstance(self.net.conv_cls_head, nn.Conv2d)
                    else self.net.conv_cls_head.in_features)
        self.feature_info = _FeatureInfo(channels, self.net.patch_size)

    def load_pretrained(self, path) -> dict:
        """Load a classifier checkpoint of the same architecture (heads of another size dropped)."""
        from ..models import load_checkpoint
        from ..weights import resolve_checkpoint

        return load_checkpoint(self.net, resolve_checkpoint(path))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ps = self.net.patch_size
        size = tuple(max(ps, int(round(v / ps)) * ps) for v in x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return [self.net.conv_features(x)]


def is_conformer_backbone(name: str) -> bool:
    """Whether ``name`` is one of the package's TransCAM / Conformer networks (else: timm)."""
    from ..models import list_models

    return name in list_models()


class DeepLab(nn.Module):
    """DeepLab segmentation network (docs/reference.md §8) on a timm backbone.

    Args:
        backbone: a timm model name supporting ``features_only`` and ``output_stride``
            (``resnet18/34/50/101/152`` and relatives). Built with ``pretrained=False``: no
            downloads; give ImageNet weights with ``pretrained_path``. Or one of the package's
            networks (``transcam_tiny``, ``transcam_small``, …; :class:`ConformerBackbone`,
            output stride 16) with ``backbone_args`` (e.g. the tiny profile's model overrides).
        head: ``"largefov"`` (DeepLab-v1, the authors' head) or ``"aspp"`` (DeepLab-v3 style).
        num_classes: output channels (21 for VOC: background + 20 classes).
        output_stride: 8 (the reference) or 16.
        pretrained_path: a file with the classification model's weights (see
            :func:`load_backbone_weights`).
        freeze_bn: keep the backbone's BatchNorm layers in eval mode with frozen affine
            parameters (the reference does).
        freeze_stem: freeze the first conv of the backbone (the reference freezes ``conv1a``).
        head_bn_momentum: momentum of the head's BN layers (reference: 0.0003).
        dropout: head dropout probability (reference: 0.5).
        backbone_args: constructor arguments of a package network backbone (not for timm).

    ``forward(x)`` takes an ImageNet-normalised ``[B,3,H,W]`` batch (any H, W) and returns
    logits ``[B, num_classes, H, W]``.
    """

    def __init__(self, backbone: str = "resnet50", head: str = "largefov", num_classes: int = 21,
                 output_stride: int = 8, pretrained_path: str | os.PathLike | None = None,
                 freeze_bn: bool = True, freeze_stem: bool = False, head_bn_momentum: float = 0.0003,
                 dropout: float = 0.5, backbone_args: dict | None = None):
        super().__init__()
        import timm

        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if is_conformer_backbone(backbone):
            self.backbone = ConformerBackbone(backbone, backbone_args)
            if output_stride != self.backbone.feature_info.reduction()[-1]:
                raise ValueError(f"backbone {backbone!r} has output stride {self.backbone.feature_info.reduction()[-1]}"
                                 f" (its patch size), not the requested {output_stride}: set output_stride="
                                 f"{self.backbone.feature_info.reduction()[-1]}")
        else:
            if backbone_args:
                raise ValueError(f"backbone_args are for the package's networks; {backbone!r} is a timm model")
            self.backbone = self._timm_backbone(timm, backbone, output_stride)
        red = self.backbone.feature_info.reduction()[-1]
        if red != output_stride:
            raise ValueError(f"backbone {backbone!r} gives output stride {red}, not the requested {output_stride}")
        in_ch = self.backbone.feature_info.channels()[-1]
        self.backbone_name = backbone
        self.head_name = head
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        if head == "largefov":
            self.head = LargeFOVHead(in_ch, num_classes, bn_momentum=head_bn_momentum, dropout=dropout)
        else:
            rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
            self.head = ASPPHead(in_ch, num_classes, rates=rates, bn_momentum=head_bn_momentum, dropout=dropout)
        if pretrained_path is not None:
            if isinstance(self.backbone, ConformerBackbone):
                self.backbone.load_pretrained(pretrained_path)
            else:
                load_backbone_weights(self.backbone, pretrained_path)
        if freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        if freeze_stem:
            stem = next((m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)), None)
            if stem is not None:
                for p in stem.parameters():
                    p.requires_grad_(False)
        self.train()

    @staticmethod
    def _timm_backbone(timm, backbone: str, output_stride: int) -> nn.Module:
        try:
            return timm.create_model(backbone, features_only=True, out_indices=(-1,),
                                     output_stride=output_stride, pretrained=False)
        except Exception as e:
            raise ValueError(
                f"timm could not build backbone {backbone!r} with features_only=True and "
                f"output_stride={output_stride}: {e}. Use a CNN that supports dilation, e.g. resnet50."
            ) from e

    def train(self, mode: bool = True) -> "DeepLab":
        """As ``nn.Module.train``, but frozen backbone BN layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            from ..models import batchnorm_eval

            batchnorm_eval(self.backbone)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DeepLab expects a [B,3,H,W] image batch, got shape {tuple(x.shape)}")
        feats = self.backbone(x)[-1]
        logits = self.head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """SGD parameter groups of the reference (docs/reference.md §8).

        Every trainable parameter appears exactly once. A parameter whose name ends in
        ``bias`` (conv biases and BN betas) goes into a bias group without weight decay, every
        other one (conv weights, BN gammas) into a weight group with ``weight_decay``:

        ========================  ==========  ============
        group                     lr          weight decay
        ========================  ==========  ============
        ``backbone_weight``       1 × lr      wd
        ``backbone_bias``         2 × lr      0
        ``head_weight``           10 × lr     wd
        ``head_bias``             20 × lr     0
        ========================  ==========  ============

        Each group also carries ``lr_mult`` so a scheduler can set ``lr = lr_mult × poly(itr)``.
        Empty groups are dropped.
        """
        spec = {
            "backbone_weight": (1.0, weight_decay),
            "backbone_bias": (2.0, 0.0),
            "head_weight": (10.0, weight_decay),
            "head_bias": (20.0, 0.0),
        }
        buckets = {k: [] for k in spec}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "backbone" if name.startswith("backbone.") else "head"
            kind = "bias" if name.endswith("bias") else "weight"
            buckets[f"{part}_{kind}"].append(p)
        groups = []
        for key, (mult, wd) in spec.items():
            if buckets[key]:
                groups.append({"params": buckets[key], "lr": lr * mult, "lr_mult": mult,
                               "weight_decay": wd, "name": key})
        return groups
