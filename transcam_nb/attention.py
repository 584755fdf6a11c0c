"""Transformer attention maps: Eq. 2-4 of the paper, and attention rollout (docs/reference.md §2.6, §10).

* **Eq. 2** ``A^l = softmax(QK^T / sqrt(D/S))`` is computed by the model, one map per head;
  :func:`head_mean` averages it over the S heads.
* **Eq. 3** averages the head-mean maps over the transformer blocks. Which blocks is a choice
  (paper Table 3): ``"AA"`` all 12, ``"AS"`` the first (shallow) half, ``"AD"`` the second
  (deep) half, or any list of block indices (:func:`resolve_blocks`).

  *Code vs paper.* The authors' code **sums** over the blocks instead of averaging
  (docs/reference.md §10). That is ``len(blocks)`` times the average: a positive scale, which does
  not change anything after the ReLU and the per-class min-max normalisation that follow, so
  both give the same pseudo labels. :func:`attention_map` sums by default (``reduce="sum"``,
  the authors' numbers) and averages with ``reduce="mean"`` (the paper's text).
* **Eq. 4** drops the class-token row and column, leaving the patch-to-patch block ``A*``
  (``N-1`` x ``N-1``). As in the code, the rows of ``A*`` are **not** re-normalised.
* :func:`attention_rollout` (Abnar & Zuidema, 2020; not in the paper).

The refinements that use these maps (Eq. 5, 9-11) are in :mod:`transcam_nb.refine`, which
re-exports everything here.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterable

import numpy as np
import torch

__all__ = ["BLOCK_PRESETS", "resolve_blocks", "head_mean", "attention_map", "attention_rollout"]

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
    (blocks ``depth//2 .. depth-1``), ``"last8"`` (the last 8 blocks, or all of a shallower
    model), a single index, a list of indices (negative indices
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
        last = re.fullmatch(r"last(\d+)", low)
        if last:  # the last n blocks (all of them in a shallower model)
            return list(range(max(0, depth - int(last.group(1))), depth))
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
