"""Conformer (Peng et al., ICCV 2021) and the TransCAM network (Li et al.), written here.

One class, :class:`Conformer`, builds both

* the **official ImageNet layout** (``conformer_{tiny,small,base}_patch16``): the last fusion
  bottleneck has stride 2, so the final CNN map is at 1/32, and the CNN head is a Linear layer
  on the global-average-pooled map; and
* the **TransCAM network** (``transcam_{tiny,small,base}``, the authors' ``Net_ti/Net_sm/Net_bs``):
  the last fusion bottleneck has stride 1 (the CNN map stays on the token grid, 1/16), and the
  CNN head is a 3×3 convolution applied *before* pooling, so the class activation map (Eq. 1)
  is a by-product of the forward pass and the conv logits are its global average.

Parameter names and shapes are those of the official checkpoints (see
``docs/reference.md`` §1–2 and ``conformer_state_dict.json``), so official files load directly.
Behaviour follows the reference code, quirks included, each marked *Quirk* below:

* FCUDown prepends the incoming class token, and the block input is ``FCUDown(x) + x_t``,
  so the class token is doubled before every transformer block from 2 to 12;
* FCUUp upsamples with nearest neighbour, and its map is added to the *input of the 3×3 conv*
  of the fusion bottleneck;
* BatchNorm eps 1e-6 in the bottlenecks and FCUUp, default 1e-5 in the stem; LayerNorm eps
  1e-6 in blocks and FCUDown, default 1e-5 in ``trans_norm``; no positional embedding.

Attention (Eq. 2) is computed with :func:`torch.nn.functional.scaled_dot_product_attention`
unless the weights are asked for; then an explicit softmax path returns the head-mean map of
each requested block. Two ways to ask:

``model(x, return_attn=True)``
    ``out.attn`` is ``[L, B, N, N]``: every block's head-averaged attention, in network order,
    class token at index 0 (``N = 1 + h·w``).
``model(x, attn_blocks=[...])``
    ``out.attn_sum`` is ``[B, N, N]``: the sum over the listed blocks (0-based), accumulated on
    the fly, so only one ``N × N`` buffer per image is kept (the authors' code keeps all 12
    maps and stacks them, ~3 GB at 768×768).
``model(x, keep_qk=[...])``
    ``out.qk`` is ``{block: QK(q, k, scale)}`` for the listed blocks: each block's queries and
    keys ``[B, heads, N, d]`` (``O(N)`` memory), while the block itself still runs the fused
    attention. :func:`transcam_nb.refine.refine_cam_sdpa` turns them into Eq. 5 without ever
    forming an ``N × N`` matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

__all__ = ["Conformer", "ConformerOutput", "QK", "CONFIGS", "build_conformer"]


class QK(NamedTuple):
    """One block's queries and keys ``[B, heads, N, d]`` and its softmax scale (Eq. 2)."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float


@dataclass
class ConformerOutput:
    """What a forward pass returns.

    conv_logits: ``[B, C]`` CNN-branch logits (GAP of ``cam`` for the TransCAM network).
    trans_logits: ``[B, C]`` transformer-branch logits (class token).
    cam: ``[B, C, h, w]`` raw class activation map of the CNN branch (Eq. 1). For the official
        layout this is the Linear head applied at every location of the 1/32 map (classic CAM).
    attn: ``[L, B, N, N]`` head-mean attention of every block, or ``None``.
    attn_sum: ``[B, N, N]`` sum of the head-mean attention over ``attn_blocks``, or ``None``.
    qk: ``{block: QK}`` queries and keys of the ``keep_qk`` blocks, or ``None``.
    """

    conv_logits: torch.Tensor
    trans_logits: torch.Tensor
    cam: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    attn_sum: torch.Tensor | None = None
    qk: dict[int, QK] | None = None

    @property
    def logits(self) -> torch.Tensor:
        """Sum of the two branches' logits (what the reference trains and evaluates)."""
        return self.conv_logits + self.trans_logits


# ------------------------------------------------------------------------------------------
# transformer branch
# ------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention (Eq. 2). Keys: ``qkv``, ``proj``."""

    def __init__(self, dim, num_heads, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False, keep_qk: bool = False):
        """Returns ``(out, head-mean map or None, QK or None)``."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, d]
        attn_mean = None
        if need_weights:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)  # the reference returns the post-dropout map
            attn_mean = attn.mean(dim=1)  # head mean, [B, N, N]
            out = attn @ v
        else:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, N, C)
        out = self.proj_drop(self.proj(out))
        # own copies of q and k (the permuted views would keep the whole qkv buffer, v included)
        return out, attn_mean, (QK(q.contiguous(), k.contiguous(), self.scale) if keep_qk else None)


class Block(nn.Module):
    """Pre-norm ViT block. Keys: ``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0,
                 attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x, need_weights: bool = False, keep_qk: bool = False):
        y, attn, qk = self.attn(self.norm1(x), need_weights, keep_qk)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn, qk


# ------------------------------------------------------------------------------------------
# CNN branch and the feature coupling units
# ------------------------------------------------------------------------------------------
def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-6)


class ConvBlock(nn.Module):
    """ResNet bottleneck (expansion 4) that also returns its mid-width feature ``x2``.

    ``x_t`` (the FCUUp map), when given, is added to the input of the 3×3 conv.
    Keys: ``conv1..3``, ``bn1..3`` and, with a projection shortcut, ``residual_conv/_bn``.
    """

    def __init__(self, inplanes, outplanes, stride=1, res_conv=False):
        super().__init__()
        med = outplanes // 4
        self.conv1 = nn.Conv2d(inplanes, med, 1, bias=False)
        self.bn1 = _bn(med)
        self.conv2 = nn.Conv2d(med, med, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(med)
        self.conv3 = nn.Conv2d(med, outplanes, 1, bias=False)
        self.bn3 = _bn(outplanes)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
            self.residual_bn = _bn(outplanes)

    def forward(self, x, x_t=None):
        residual = x
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x if x_t is None else x + x_t)
        x2 = F.relu(self.bn2(x))
        x = self.bn3(self.conv3(x2))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return F.relu(x + residual), x2


class FCUDown(nn.Module):
    """CNN map → tokens: 1×1 conv, average pool by ``dw_stride``, LayerNorm, GELU, then the
    incoming class token is prepended (*quirk*: the block input then holds it twice)."""

    def __init__(self, inplanes, outplanes, dw_stride):
        super().__init__()
        self.dw_stride = dw_stride
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.ln = nn.LayerNorm(outplanes, eps=1e-6)

    def forward(self, x, x_t):
        x = self.conv_project(x)
        x = F.avg_pool2d(x, self.dw_stride, self.dw_stride).flatten(2).transpose(1, 2)
        x = F.gelu(self.ln(x))
        return torch.cat([x_t[:, :1], x], dim=1)


class FCUUp(nn.Module):
    """Tokens → CNN map: drop the class token, 1×1 conv, BN, ReLU, nearest upsampling."""

    def __init__(self, inplanes, outplanes, up_stride):
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.bn = _bn(outplanes)

    def forward(self, x, h, w):
        B, _, C = x.shape
        x = x[:, 1:].transpose(1, 2).reshape(B, C, h, w)
        x = F.relu(self.bn(self.conv_project(x)))
        return F.interpolate(x, size=(h * self.up_stride, w * self.up_stride), mode="nearest")


class ConvTransBlock(nn.Module):
    """One Conformer stage unit: CNN bottleneck, FCUDown, transformer block, FCUUp, fusion
    bottleneck. Keys: ``cnn_block``, ``fusion_block``, ``squeeze_block``, ``expand_block``,
    ``trans_block`` (in that registration order, like the official state_dict)."""

    def __init__(self, inplanes, outplanes, res_conv, stride, dw_stride, embed_dim, num_heads,
                 mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                 last_fusion=False, last_stride=2):
        super().__init__()
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        if last_fusion:
            self.fusion_block = ConvBlock(outplanes, outplanes, stride=last_stride, res_conv=True)
        else:
            self.fusion_block = ConvBlock(outplanes, outplanes)
        self.squeeze_block = FCUDown(outplanes // 4, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, outplanes // 4, dw_stride)
        self.trans_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate,
                                 attn_drop_rate, drop_path_rate)

    def forward(self, x, x_t, need_weights=False, keep_qk=False):
        x, x2 = self.cnn_block(x)
        h, w = x2.shape[2] // self.dw_stride, x2.shape[3] // self.dw_stride
        x_st = self.squeeze_block(x2, x_t)
        x_t, attn, qk = self.trans_block(x_st + x_t, need_weights, keep_qk)
        x_t_r = self.expand_block(x_t, h, w)
        x, _ = self.fusion_block(x, x_t_r)
        return x, x_t, attn, qk


# ------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------
class Conformer(nn.Module):
    """Conformer with a CNN and a transformer branch (12 blocks by default).

    Args:
        patch_size: token stride; a multiple of 16 (16 or 32 in the official configs).
        channel_ratio: CNN width multiplier (stage channels 64·r, 128·r, 256·r ×4/4).
        embed_dim, num_heads, depth, mlp_ratio, qkv_bias, qk_scale: transformer settings.
        num_classes: outputs of both heads (TransCAM: 21, channel 0 never trained).
        cam_head: ``True`` for the TransCAM network (3×3 conv head before GAP, last stride 1);
            ``False`` for the official ImageNet layout (Linear head after GAP, last stride 2).
        last_stride: stride of the last fusion bottleneck (default 1 with ``cam_head``, else 2).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (stochastic depth applies to
            the transformer blocks only, linearly from 0 to ``drop_path_rate``).
    """

    def __init__(self, patch_size=16, in_chans=3, num_classes=1000, base_channel=64, channel_ratio=4,
                 embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, cam_head=False, last_stride=None):
        super().__init__()
        if patch_size % 16 or patch_size <= 0:
            raise ValueError(f"patch_size must be a positive multiple of 16 (the stage-3 FCU stride is "
                             f"patch_size/16), got {patch_size}")
        if depth < 3 or depth % 3:
            raise ValueError(f"depth must be a positive multiple of 3 (three CNN stages), got {depth}")
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depth = depth
        self.cam_head = cam_head
        self.last_stride = (1 if cam_head else 2) if last_stride is None else last_stride
        dpr = [drop_path_rate * i / (depth - 1) for i in range(depth)]  # linspace(0, rate, depth)

        c1 = int(base_channel * channel_ratio)
        c2, c3 = c1 * 2, c1 * 4
        if c1 % 4 or c1 < 4:
            raise ValueError(f"base_channel*channel_ratio={base_channel * channel_ratio} must be a multiple of 4")

        # registration order follows the official state_dict
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.trans_norm = nn.LayerNorm(embed_dim)
        self.trans_cls_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if cam_head:
            self.conv_cls_head = nn.Conv2d(c3, num_classes, 3, padding=1)
        else:
            self.conv_cls_head = nn.Linear(c3, num_classes) if num_classes > 0 else nn.Identity()

        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        dw = patch_size // 4
        self.conv_1 = ConvBlock(64, c1, stride=1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(64, embed_dim, dw, stride=dw)
        self.trans_1 = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[0])

        per = depth // 3
        common = dict(embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
        i = 2
        for _ in range(per - 1):  # stage 1 (the first unit is conv_1 + trans_1)
            self.add_module(f"conv_trans_{i}", ConvTransBlock(c1, c1, False, 1, dw, drop_path_rate=dpr[i - 1], **common))
            i += 1
        for j in range(per):  # stage 2, 1/8
            first = j == 0
            self.add_module(f"conv_trans_{i}", ConvTransBlock(
                c1 if first else c2, c2, first, 2 if first else 1, dw // 2, drop_path_rate=dpr[i - 1], **common))
            i += 1
        for j in range(per):  # stage 3, 1/16 (the last fusion goes to 1/32 in the official model)
            first = j == 0
            self.add_module(f"conv_trans_{i}", ConvTransBlock(
                c2 if first else c3, c3, first, 2 if first else 1, dw // 4, drop_path_rate=dpr[i - 1],
                last_fusion=(i == depth), last_stride=self.last_stride, **common))
            i += 1

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        """The ``depth`` transformer blocks in network order (``trans_1`` first)."""
        return [self.trans_1] + [getattr(self, f"conv_trans_{i}").trans_block for i in range(2, self.depth + 1)]

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token"}

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(f"expected an input of shape [B, {self.conv1.in_channels}, H, W], got {list(x.shape)}")
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"input height and width must be multiples of the patch size {self.patch_size}; got "
                f"{H}x{W} (resize or pad, e.g. to {(-(-H // self.patch_size)) * self.patch_size}x"
                f"{(-(-W // self.patch_size)) * self.patch_size})")

    # -- forward ---------------------------------------------------------------------------
    def _block_set(self, blocks, arg: str) -> set[int]:
        if blocks is None:
            return set()
        out = {int(b) for b in blocks}
        bad = [b for b in out if not 0 <= b < self.depth]
        if bad:
            raise ValueError(f"{arg} must be block indices in 0..{self.depth - 1}, got {sorted(bad)}")
        return out

    def _trunk(self, x, need=lambda idx: False, qk_wanted=frozenset(), collect=None):
        """Both branches up to the heads: the last CNN feature map ``x_c`` and the tokens ``x_t``;
        ``collect(block, attention, qk)`` receives what each block returns."""
        B = x.shape[0]
        x_base = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x_c, _ = self.conv_1(x_base)
        x_t = self.trans_patch_conv(x_base).flatten(2).transpose(1, 2)
        x_t = torch.cat([self.cls_token.expand(B, -1, -1), x_t], dim=1)
        x_t, a, qk = self.trans_1(x_t, need(0), 0 in qk_wanted)
        if collect is not None:
            collect(0, a, qk)
        for i in range(2, self.depth + 1):
            x_c, x_t, a, qk = getattr(self, f"conv_trans_{i}")(x_c, x_t, need(i - 1), i - 1 in qk_wanted)
            if collect is not None:
                collect(i - 1, a, qk)
        return x_c, x_t

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN branch's last feature map ``[B, C, H/16, W/16]`` (the map the CAM head reads;
        both branches run, since the CNN branch reads the transformer's tokens through the FCUs).
        Lets a Conformer serve as a dense-prediction backbone (DeepLab's ``transcam_*`` backbones)."""
        self.check_input(x)
        return self._trunk(x)[0]

    def forward(self, x: torch.Tensor, return_attn: bool = False,
                attn_blocks: Iterable[int] | None = None,
                keep_qk: Iterable[int] | None = None) -> ConformerOutput:
        """Run both branches. See the module docstring for ``return_attn`` / ``attn_blocks`` /
        ``keep_qk``."""
        self.check_input(x)
        wanted = self._block_set(attn_blocks, "attn_blocks")
        qk_wanted = self._block_set(keep_qk, "keep_qk")
        attn_all: list[torch.Tensor] = []
        attn_sum = None
        qks: dict[int, QK] = {}

        def collect(idx, a, qk):
            nonlocal attn_sum
            if qk is not None:
                qks[idx] = qk
            if a is None:
                return
            if return_attn:
                attn_all.append(a)
            if idx in wanted:
                attn_sum = a.clone() if attn_sum is None else attn_sum.add_(a)

        def need(idx):
            return return_attn or idx in wanted

        x_c, x_t = self._trunk(x, need, qk_wanted, collect)
        if self.cam_head:
            cam = self.conv_cls_head(x_c)
            conv_logits = cam.mean(dim=(2, 3))
        else:
            pooled = x_c.mean(dim=(2, 3))
            conv_logits = self.conv_cls_head(pooled)
            cam = None
            if isinstance(self.conv_cls_head, nn.Linear):  # classic CAM (Eq. 1) of a linear head
                cam = torch.einsum("bchw,kc->bkhw", x_c, self.conv_cls_head.weight) + \
                    self.conv_cls_head.bias[None, :, None, None]
        trans_logits = self.trans_cls_head(self.trans_norm(x_t)[:, 0])
        return ConformerOutput(
            conv_logits=conv_logits,
            trans_logits=trans_logits,
            cam=cam,
            attn=torch.stack(attn_all) if return_attn else None,
            attn_sum=attn_sum,
            qk=qks if keep_qk is not None else None,
        )

    def reset_classifier(self, num_classes: int) -> None:
        """Replace both heads with freshly initialised ones for ``num_classes`` outputs."""
        c3 = self.conv_cls_head.in_channels if self.cam_head else self.conv_cls_head.in_features
        self.num_classes = num_classes
        self.trans_cls_head = nn.Linear(self.embed_dim, num_classes)
        self.conv_cls_head = nn.Conv2d(c3, num_classes, 3, padding=1) if self.cam_head else nn.Linear(c3, num_classes)
        self.trans_cls_head.apply(_init_weights)
        self.conv_cls_head.apply(_init_weights)


def _init_weights(m: nn.Module) -> None:
    """The official initialisation (docs/reference.md §1.2)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.weight, 1.0)
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.constant_(m.weight, 1.0)
        nn.init.constant_(m.bias, 0.0)


# name -> (constructor kwargs, num_classes default)
_BASE = dict(depth=12, mlp_ratio=4.0, qkv_bias=True)
CONFIGS: dict[str, dict] = {
    "conformer_tiny_patch16": dict(_BASE, patch_size=16, channel_ratio=1, embed_dim=384, num_heads=6,
                                   num_classes=1000, cam_head=False),
    "conformer_small_patch16": dict(_BASE, patch_size=16, channel_ratio=4, embed_dim=384, num_heads=6,
                                    num_classes=1000, cam_head=False),
    "conformer_small_patch32": dict(_BASE, patch_size=32, channel_ratio=4, embed_dim=384, num_heads=6,
                                    num_classes=1000, cam_head=False),
    "conformer_base_patch16": dict(_BASE, patch_size=16, channel_ratio=6, embed_dim=576, num_heads=9,
                                   num_classes=1000, cam_head=False),
    # the authors' Net_ti / Net_sm / Net_bs: 21 outputs (channel 0 never trained), drop_path 0.1
    "transcam_tiny": dict(_BASE, patch_size=16, channel_ratio=1, embed_dim=384, num_heads=6,
                          num_classes=21, cam_head=True, drop_path_rate=0.1),
    "transcam_small": dict(_BASE, patch_size=16, channel_ratio=4, embed_dim=384, num_heads=6,
                           num_classes=21, cam_head=True, drop_path_rate=0.1),
    "transcam_base": dict(_BASE, patch_size=16, channel_ratio=6, embed_dim=576, num_heads=9,
                          num_classes=21, cam_head=True, drop_path_rate=0.1),
}


def build_conformer(name: str, *, num_classes: int | None = None, **overrides) -> Conformer:
    """Build a named configuration; ``overrides`` change any constructor argument."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(CONFIGS)}")
    kw = dict(CONFIGS[name])
    if num_classes is not None:
        kw["num_classes"] = num_classes
    known = set(Conformer.__init__.__code__.co_varnames[1:Conformer.__init__.__code__.co_argcount])
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for {name!r}; valid: {sorted(known)}")
    kw.update(overrides)
    return Conformer(**kw)
