"""The wide ResNet-38 ("resnet38d") of PSA / SEAM, one of :class:`~transcam_nb.postprocess.affinity.AffinityNet`'s
backbones (docs/reference.md §7.1)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResNet38d"]


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
    (bottleneck 4096, dilation 4, dropout 0.5) → bn7 + ReLU (docs/reference.md §7.1).

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
