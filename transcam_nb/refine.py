"""Attention maps and CAM refinement (paper Eq. 2-5, 9-11; REFERENCE.md §2.6 and §10).

The pieces, in the paper's notation:

* **Eq. 2** ``A^l = softmax(QK^T / sqrt(D/S))`` is computed by the model, one map per head;
  :func:`head_mean` averages it over the S heads.
* **Eq. 3** averages the head-mean maps over the transformer blocks. Which blocks is a choice
  (paper Table 3): ``"AA"`` all 12, ``"AS"`` the first (shallow) half, ``"AD"`` the second
  (deep) half, or any list of block indices (:func:`resolve_blocks`).

  *Code vs paper.* The authors' code **sums** over the blocks instead of averaging
  (REFERENCE.md §10). That is ``len(blocks)`` times the average: a positive scale, which does
  not change anything after the ReLU and the per-class min-max normalisation that follow, so
  both give the same pseudo labels. :func:`attention_map` sums by default (``reduce="sum"``,
  the authors' numbers) and averages with ``reduce="mean"`` (the paper's text).
* **Eq. 4** drops the class-token row and column, leaving the patch-to-patch block ``A*``
  (``N-1`` x ``N-1``). As in the code, the rows of ``A*`` are **not** re-normalised.
* **Eq. 5** ``M*_c = Γ(A* · Γ(M_c))``: every location gathers the class scores of the
  locations it attends to, using its own attention row: ``refined = A* @ cam`` with rows as
  queries (:func:`refine_cam` with ``method="transcam"``). The CAM that goes in is the *raw*
  3x3-conv class map, with no ReLU and no normalisation (REFERENCE.md §2.6); ReLU and
  normalisation are applied later, after the multi-scale fusion (:mod:`transcam_nb.cam`).
* **Eq. 9-10** ``clsattn`` (TS-CAM style coupling): the class token's attention to the patches
  (row 0, columns 1:, of the block-aggregated map), reshaped to the grid and multiplied
  element-wise into every class map.
* **Eq. 11** ``attnagg``: the same product as ``transcam`` with ``A*`` transposed (columns
  instead of rows: each location *spreads* its score to the locations attending to it).
* ``rollout`` (an extra variant the paper did not try): attention rollout (Abnar & Zuidema,
  2020), the product over blocks of the row-normalised ``0.5·A + 0.5·I``, class token
  dropped afterwards, used in place of ``A*`` in Eq. 5.
* ``none``: the baseline CAM, unchanged.

Everything is batched, works on any device, and takes non-square token grids (the grid shape
is read from the CAM, never from ``sqrt(N)`` as in the authors' code).
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterable

import numpy as np
import torch

__all__ = [
    "METHODS",
    "BLOCK_PRESETS",
    "resolve_blocks",
    "head_mean",
    "attention_map",
    "attention_rollout",
    "refine_cam",
    "cam_box_mask",
    "affinity_refine",
]

#: refinement methods understood by :func:`refine_cam`
METHODS = ("transcam", "clsattn", "attnagg", "rollout", "none")

#: named block subsets of paper Table 3 (resolved against the model depth)
BLOCK_PRESETS = {
    "AA": "all blocks",
    "AS": "first (shallow) half of the blocks",
    "AD": "second (deep) half of the blocks",
}


def resolve_blocks(blocks: str | int | Iterable[int] | None = None, depth: int = 12) -> list[int]:
    """Turn a block choice into a sorted list of block indices in ``[0, depth)``.

    ``blocks`` may be ``None``/``"all"``/``"AA"`` (all blocks, the paper's and the code's
    default), ``"AS"``/``"first"`` (blocks ``0 .. depth//2 - 1``), ``"AD"``/``"second"``
    (blocks ``depth//2 .. depth-1``), a single index, a list of indices (negative indices
    count from the end), or a string such as ``"0,3,11"`` or ``"6-11"`` (command lines).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if blocks is None:
        return list(range(depth))
    if isinstance(blocks, str):
        key = blocks.strip()
        low = key.lower()
        if low in ("aa", "all"):
            return list(range(depth))
        if low in ("as", "first", "shallow"):
            return list(range(depth // 2))
        if low in ("ad", "second", "deep"):
            return list(range(depth // 2, depth))
        idx: list[int] = []
        try:
            for part in key.replace(" ", "").split(","):
                if not part:
                    continue
                m = re.fullmatch(r"(\d+)-(\d+)", part)
                if m:
                    idx.extend(range(int(m.group(1)), int(m.group(2)) + 1))
                else:
                    idx.append(int(part))
        except ValueError:
            raise ValueError(
                f"blocks={blocks!r} is not understood; use 'AA'/'all', 'AS'/'first', 'AD'/'second', "
                "a list of block indices, or a string like '0,3,11' or '6-11'"
            ) from None
        blocks = idx
    if isinstance(blocks, (int, np.integer)):
        blocks = [int(blocks)]
    out = []
    for b in blocks:
        b = int(b)
        if not -depth <= b < depth:
            raise ValueError(f"block index {b} is out of range for a model with {depth} blocks")
        out.append(b % depth)
    out = sorted(set(out))
    if not out:
        raise ValueError("blocks selects no block at all; give at least one block index")
    return out


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in tensors:
        if t.is_floating_point() and t.dtype == torch.float64:
            dt = torch.float64
    return dt


def _no_autocast(device: torch.device):
    """Refinement is a small product; keep it in full precision even under AMP."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except Exception:  # pragma: no cover - device types without autocast support
        return contextlib.nullcontext()


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if isinstance(x, torch.Tensor):
        return x, False
    raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")


def head_mean(attn: torch.Tensor) -> torch.Tensor:
    """Eq. 2 averaged over heads: ``[B, heads, N, N] -> [B, N, N]`` (or ``[L,B,H,N,N] -> [L,B,N,N]``)."""
    if attn.dim() not in (4, 5):
        raise ValueError(
            f"head_mean expects per-head attention [B, heads, N, N] or [L, B, heads, N, N], got shape "
            f"{tuple(attn.shape)}"
        )
    return attn.mean(dim=-3)


def _per_block(attn) -> list[torch.Tensor] | torch.Tensor:
    """Normalise per-block attention input to a [L, B, N, N] tensor or a list of [B, N, N]."""
    if isinstance(attn, (list, tuple)):
        if not attn:
            raise ValueError("attention list is empty")
        blocks = []
        for i, a in enumerate(attn):
            a, _ = _as_tensor(a)
            if a.dim() == 4:  # [B, heads, N, N] (the authors' per-block tensors)
                a = head_mean(a)
            if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
                raise ValueError(
                    f"attention of block {i} must be [B, heads, N, N] or [B, N, N], got {tuple(a.shape)}"
                )
            blocks.append(a)
        return blocks
    attn, _ = _as_tensor(attn)
    if attn.dim() == 5:  # [L, B, heads, N, N]
        attn = head_mean(attn)
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            "per-block attention must be [L, B, N, N] (head-mean, as model(x, return_attn=True).attn), "
            f"[L, B, heads, N, N], or a list of per-block tensors; got shape {tuple(attn.shape)}"
        )
    return attn


def attention_map(
    attn,
    blocks: str | Iterable[int] | None = None,
    *,
    reduce: str = "sum",
    drop_cls_token: bool = True,
) -> torch.Tensor:
    """The block-aggregated attention map of Eq. 3-4.

    Parameters
    ----------
    attn
        Per-block attention: ``[L, B, N, N]`` head-mean maps (what ``model(x,
        return_attn=True).attn`` returns), ``[L, B, heads, N, N]`` per-head maps (averaged over
        heads first, Eq. 2), or a list of ``L`` per-block tensors ``[B, heads, N, N]`` /
        ``[B, N, N]``. Token 0 is the class token.
    blocks
        Which blocks enter Eq. 3 (see :func:`resolve_blocks`); default all.
    reduce
        ``"sum"`` over the chosen blocks (the authors' code, default) or ``"mean"`` (the paper's
        text). They differ by the factor ``len(blocks)``, which the later ReLU + min-max
        normalisation removes.
    drop_cls_token
        Eq. 4: drop row and column 0, returning the patch-to-patch block ``A*`` of shape
        ``[B, N-1, N-1]``. ``False`` keeps ``[B, N, N]``.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    per = _per_block(attn)
    depth = len(per)
    idx = resolve_blocks(blocks, depth)
    if isinstance(per, list):
        acc = per[idx[0]].clone()
        for i in idx[1:]:
            acc = acc + per[i]
    else:
        acc = per[idx].sum(0)
    if reduce == "mean":
        acc = acc / len(idx)
    if drop_cls_token:
        acc = acc[:, 1:, 1:]
    return acc


def attention_rollout(
    attn,
    blocks: str | Iterable[int] | None = None,
    *,
    residual: float = 0.5,
    drop_cls_token: bool = True,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) over the chosen blocks.

    For each chosen block ``l`` (in network order) take ``Ã_l = (1-residual)·A_l + residual·I``
    with ``A_l`` the head-mean attention, row-normalise it, and multiply:
    ``R = Ã_last · … · Ã_first``. Row ``i`` of ``R`` says how much output token ``i`` draws on
    each input token through the residual stream. With ``drop_cls_token`` the class-token row
    and column are dropped afterwards (not re-normalised), as in Eq. 4.

    Not in the paper; offered as an extra refinement variant (``refine_cam(...,
    method="rollout")``). Needs the per-block maps (``model(x, return_attn=True)``), since a
    product cannot be accumulated as a running sum.
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    per = _per_block(attn)
    idx = resolve_blocks(blocks, len(per))
    first = per[idx[0]]
    dtype = _float_dtype(first)
    n = first.shape[-1]
    eye = torch.eye(n, dtype=dtype, device=first.device)
    with _no_autocast(first.device):
        rollout = None
        for i in idx:
            a = per[i].to(dtype)
            a = (1.0 - residual) * a + residual * eye
            a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            rollout = a if rollout is None else torch.bmm(a, rollout)
    if drop_cls_token:
        rollout = rollout[:, 1:, 1:]
    return rollout


def _patch_attention(a: torch.Tensor, hw: int, method: str) -> torch.Tensor:
    """Accept ``[B, 1+hw, 1+hw]`` (class token kept) or ``[B, hw, hw]`` and return ``A*``."""
    n = a.shape[-1]
    if n == hw + 1:
        return a[:, 1:, 1:]
    if n == hw:
        return a
    raise ValueError(
        f"attention has N={n} tokens but the CAM grid has {hw} locations; expected N = {hw + 1} "
        f"(with the class token) or N = {hw} (class token already dropped) for method {method!r}"
    )


def refine_cam(
    cam,
    attn=None,
    method: str = "transcam",
    *,
    blocks: str | Iterable[int] | None = None,
    reduce: str = "sum",
    residual: float = 0.5,
):
    """Refine a raw class activation map with transformer attention.

    Parameters
    ----------
    cam
        Raw CAM ``[B, C, h, w]`` (the 3x3-conv class map, Eq. 1; no ReLU, no normalisation).
        A numpy array gives a numpy result.
    attn
        The attention, in one of these forms:

        * ``[B, N, N]``: already aggregated over blocks (Eq. 3), e.g. the streaming
          ``model(x, attn_blocks=blocks).attn_sum``. ``N = 1 + h·w`` with the class token
          at index 0, or ``N = h·w`` when the class token was already dropped (not possible
          for ``clsattn``).
        * per-block ``[L, B, N, N]`` / ``[L, B, heads, N, N]`` / list of per-block tensors:
          aggregated here with :func:`attention_map` (``blocks``, ``reduce``). ``rollout``
          needs this form.
        * ``None`` for ``method="none"``.
    method
        ``"transcam"`` (Eq. 5, ``A* @ cam``, rows = queries), ``"clsattn"`` (Eq. 9-10),
        ``"attnagg"`` (Eq. 11, ``A*ᵀ @ cam``), ``"rollout"`` (attention rollout in place of
        ``A*``), ``"none"`` (the baseline CAM, returned unchanged).
    blocks, reduce
        Block choice and sum/mean for per-block input (ignored for aggregated ``[B,N,N]``).
    residual
        Identity weight of attention rollout.

    Returns
    -------
    The refined map, ``[B, C, h, w]``, in float32 (float64 if an input is float64), computed
    outside autocast.
    """
    if method not in METHODS:
        raise ValueError(f"unknown refinement method {method!r}; choose one of {METHODS}")
    cam_t, was_np = _as_tensor(cam)
    if cam_t.dim() != 4:
        raise ValueError(f"cam must be [B, C, h, w], got shape {tuple(cam_t.shape)}")
    if method == "none":
        out = cam_t
        return out.numpy() if was_np else out
    if attn is None:
        raise ValueError(f"method {method!r} needs the attention (attn=None was given)")
    B, C, h, w = cam_t.shape
    hw = h * w

    if method == "rollout":
        if isinstance(attn, (np.ndarray, torch.Tensor)) and attn.ndim == 3:
            raise ValueError(
                "method 'rollout' needs per-block attention [L, B, N, N] (model(x, return_attn=True).attn), "
                "not a block-aggregated [B, N, N] map"
            )
        a = attention_rollout(attn, blocks, residual=residual, drop_cls_token=False)
    elif isinstance(attn, (list, tuple)) or (hasattr(attn, "ndim") and attn.ndim in (4, 5)):
        a = attention_map(attn, blocks, reduce=reduce, drop_cls_token=False)
    else:
        a, _ = _as_tensor(attn)
        if a.dim() != 3 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention must be [B, N, N] (or per-block), got shape {tuple(a.shape)}")
    if a.shape[0] != B:
        raise ValueError(f"attention batch size {a.shape[0]} does not match the CAM batch size {B}")
    a = a.to(cam_t.device)

    dtype = _float_dtype(cam_t, a)
    with _no_autocast(cam_t.device):
        flat = cam_t.to(dtype).reshape(B, C, hw)  # [B, C, hw]
        if method == "clsattn":
            if a.shape[-1] != hw + 1:
                raise ValueError(
                    f"method 'clsattn' needs the class-token row: attention must be [B, {hw + 1}, {hw + 1}], "
                    f"got {tuple(a.shape)}"
                )
            cls_row = a[:, 0, 1:].to(dtype)  # [B, hw]: class token -> patches
            out = flat * cls_row[:, None, :]
        else:
            ap = _patch_attention(a, hw, method).to(dtype)  # [B, hw, hw], rows = queries
            if method == "attnagg":
                ap = ap.transpose(1, 2)
            # refined[b, c, i] = sum_j A[b, i, j] cam[b, c, j]  ==  cam @ A^T per image
            out = torch.bmm(flat, ap.transpose(1, 2))
        out = out.reshape(B, C, h, w)
    return out.numpy() if was_np else out


# --------------------------------------------------------------------------------------
# CLIP-ES-style affinity refinement (issue 11; an extra variant, not in the TransCAM paper)
# --------------------------------------------------------------------------------------
def cam_box_mask(cam_norm: torch.Tensor, threshold: float = 0.4) -> torch.Tensor:
    """``[B, C, h, w]`` normalised CAMs -> ``[B, C, h, w]`` float masks: the union of the
    bounding boxes of the 8-connected components of ``cam_norm ≥ threshold`` (per map).
    A map with no location above the threshold gets an all-zero mask."""
    from scipy import ndimage

    m = (cam_norm >= threshold).cpu().numpy()
    out = np.zeros(m.shape, np.float32)
    struct = np.ones((3, 3), bool)
    for b in range(m.shape[0]):
        for c in range(m.shape[1]):
            if not m[b, c].any():
                continue
            lab, _ = ndimage.label(m[b, c], structure=struct)
            for sl in ndimage.find_objects(lab):
                if sl is not None:
                    out[b, c][sl] = 1.0
    return torch.from_numpy(out).to(cam_norm.device)


def affinity_refine(
    cam,
    attn,
    *,
    blocks: str | Iterable[int] | None = None,
    relu_cam: bool = True,
    box_mask: bool = True,
    sinkhorn: bool = True,
    rounds: int = 3,
    box_threshold: float = 0.4,
):
    """CLIP-ES-style attention affinity (Lin et al., "CLIP is also an efficient segmenter",
    CVPR 2023, their class-aware attention-based affinity), on Conformer attention.

    1. ``A`` = the head-mean attention averaged over ``blocks`` (default: the last 8 blocks),
       class token dropped (``[B, hw, hw]``, rows = queries).
    2. ``sinkhorn``: ``rounds`` times, normalise the columns to sum 1, then the rows; then
       symmetrise ``A ← (A + Aᵀ) / 2``. (Off: ``A`` as in Eq. 5.)
    3. The CAM that is propagated: ``relu_cam``: ``ReLU(M_c) / max ReLU(M_c)`` per image and
       class (off: the raw CAM, as Eq. 5).
    4. ``box_mask``: for class ``c`` only keys inside the bounding boxes of the connected
       components of the normalised CAM ≥ ``box_threshold`` contribute:
       ``refined_c[i] = Σ_j A[i, j] · box_c[j] · M_c[j]``.

    All switches on is the CLIP-ES recipe; each off gives one row of the ingredient ablation.
    ``cam`` ``[B, C, h, w]`` (numpy in, numpy out), ``attn`` per-block ``[L, B, N, N]`` (or
    ``[L, B, heads, N, N]`` / a list). Returns ``[B, C, h, w]`` float32.
    """
    cam_t, was_np = _as_tensor(cam)
    if cam_t.dim() != 4:
        raise ValueError(f"cam must be [B, C, h, w], got shape {tuple(cam_t.shape)}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    per = _per_block(attn)
    depth = len(per)
    if blocks is None:
        blocks = list(range(max(0, depth - 8), depth))
    B, C, h, w = cam_t.shape
    hw = h * w
    a = attention_map(per, blocks, reduce="mean", drop_cls_token=False)
    if a.shape[0] != B:
        raise ValueError(f"attention batch size {a.shape[0]} does not match the CAM batch size {B}")
    with _no_autocast(cam_t.device):
        a = _patch_attention(a.to(cam_t.device).float(), hw, "affinity")
        if sinkhorn:
            for _ in range(rounds):
                a = a / a.sum(1, keepdim=True).clamp_min(1e-12)  # columns
                a = a / a.sum(2, keepdim=True).clamp_min(1e-12)  # rows
            a = 0.5 * (a + a.transpose(1, 2))
        raw = cam_t.float()
        pos = torch.relu(raw)
        norm = pos / pos.flatten(2).amax(-1).clamp_min(1e-5)[..., None, None]
        src = norm if relu_cam else raw
        flat = src.reshape(B, C, hw)
        if box_mask:
            flat = flat * cam_box_mask(norm, box_threshold).reshape(B, C, hw)
        out = torch.bmm(flat, a.transpose(1, 2)).reshape(B, C, h, w)
    return out.numpy() if was_np else out
