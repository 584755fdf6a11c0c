"""Learned aggregation of blocks and heads: Eq. 5 with a fitted weight per block and head.

The paper forms ``A*`` by averaging the attention over the heads (Eq. 2) and summing it over
the blocks (Eq. 3, "AA"; Table 3 compares the shallow and deep halves, "AS"/"AD"). Here every
block *l* and head *h* gets its own weight ``w_lh`` and

    ``A_w = Σ_l Σ_h w_lh · softmax(Q_lh K_lhᵀ / √d)``,   ``M*_c = A_w[1:, 1:] · M_c``   (Eq. 5 with A_w)

with ``w`` non-negative and summing to 1 (``w = softmax(θ)`` over all L·H entries). Uniform
weights ``1/(L·H)`` give the paper's AA divided by ``L`` (its *mean* form; the ReLU and min-max
normalisation after the multi-scale fusion remove that factor), weights spread evenly over the
heads of one block give that block's map, a one-hot weight one head's map.

**Fitting (image labels only).** The weights are fitted on the *training* split's image-level
labels, never on masks, with the classifier frozen: the global average of the refined CAM is a
class score, ``s_c(w) = mean_i M*_c[i] = Σ_lh w_lh · g_lhc`` with
``g_lhc = mean_i Σ_j A_lh[i, j] M_c[j]`` (one number per block, head and class, computed once per
image: the fit itself is a small problem over pre-computed features), and ``θ`` minimises the
multi-label binary cross-entropy of ``s(w)`` against the labels (Adam, from ``θ = 0``, i.e. from
the uniform AA weights). So a head earns weight when the locations it attends to carry the
scores of the classes present and not of the others. This is our objective, in the spirit of
WeakTr's learned weighting of attention heads (Zhu et al., "WeakTr", arXiv 2304.01184, 2023),
which trains a small network on the heads' maps; it is not a re-implementation of it.

Functions: :func:`head_attention` (per-head maps from kept queries and keys),
:func:`weighted_attention`, :func:`refine_learned` (Eq. 5 with ``A_w``, fused, no N×N matrix),
:func:`aggregation_features` / :func:`fit_weights` / :func:`fit_aggregation` (the fit), and
:func:`learned_variant` (a ``{name: (method, blocks)}`` entry for
:func:`transcam_nb.cam.multiscale_variants` and the book's variant tables, registered in
:data:`transcam_nb.refine.REFINEMENTS` under a name that carries a hash of the weights).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .refine import (
    _no_autocast,
    _qk_list,
    _sdpa_inputs,
    register_refinement,
    resolve_blocks,
)

__all__ = [
    "head_attention",
    "weighted_attention",
    "refine_learned",
    "aggregation_features",
    "fit_weights",
    "fit_aggregation",
    "uniform_weights",
    "block_weights",
    "learned_variant",
    "LEARNED",
]

#: the name of the learned variant in the book's tables (chapter 8) and the committed variants file
LEARNED = "Learned (blocks × heads)"


def _check_weights(weights, L: int, H: int) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=torch.float32)
    if tuple(w.shape) != (L, H):
        raise ValueError(f"weights must have shape [blocks, heads] = [{L}, {H}], got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w


def uniform_weights(depth: int, heads: int) -> torch.Tensor:
    """``1/(L·H)`` everywhere: the paper's AA in its mean form."""
    return torch.full((depth, heads), 1.0 / (depth * heads))


def block_weights(depth: int, heads: int, blocks) -> torch.Tensor:
    """Weights spread evenly over the heads of ``blocks`` (``"AS"``, ``"AD"``, indices, ...):
    the paper's block subsets in the weighted form."""
    idx = resolve_blocks(blocks, depth)
    w = torch.zeros(depth, heads)
    w[idx] = 1.0 / (len(idx) * heads)
    return w


def head_attention(qk) -> torch.Tensor:
    """Per-head attention ``[L, B, H, N, N]`` (Eq. 2, float32) from the kept ``(q, k, scale)``
    triples of ``L`` blocks (``model(x, keep_qk=blocks).qk``, a dict or a sequence)."""
    qk = _qk_list(qk)
    with _no_autocast(qk[0][0].device):
        return torch.stack([((q.float() @ k.float().transpose(-2, -1)) * scale).softmax(-1) for q, k, scale in qk])


def weighted_attention(attn, weights) -> torch.Tensor:
    """``A_w = Σ_lh w_lh A_lh``: per-head maps ``[L, B, H, N, N]`` and weights ``[L, H]`` →
    ``[B, N, N]`` (class token kept; :func:`transcam_nb.refine.refine_cam` takes it as it is)."""
    if attn.dim() != 5:
        raise ValueError(f"attn must be per-head maps [L, B, H, N, N], got shape {tuple(attn.shape)}")
    w = _check_weights(weights, attn.shape[0], attn.shape[2]).to(attn.device, attn.dtype)
    return torch.einsum("lbhij,lh->bij", attn, w)


def refine_learned(cam: torch.Tensor, qk, weights) -> torch.Tensor:
    """Eq. 5 with ``A_w``: ``[B, C, h, w]`` raw CAM → refined ``[B, C, h, w]`` (float32).

    ``qk``: the ``(q, k, scale)`` of the ``L`` blocks that ``weights`` (``[L, H]``) covers, in
    block order. As :func:`transcam_nb.refine.refine_cam_sdpa`: each head's attention is
    applied to the values ``[0; CAM]`` by ``scaled_dot_product_attention`` (no N×N matrix),
    row 0 dropped; the heads are then summed with their weights instead of averaged."""
    qk, B, C, h, w = _sdpa_inputs(cam, qk)
    hw, q0 = h * w, qk[0][0]
    wt = _check_weights(weights, len(qk), q0.shape[1]).to(cam.device)
    heads, d = q0.shape[1], q0.shape[-1]
    groups = -(-C // d)  # value width = head width (the fused CPU kernel), zero-padded
    with _no_autocast(cam.device):
        v = F.pad(cam.reshape(B, C, hw).transpose(1, 2).float(), (0, groups * d - C, 1, 0)).to(q0.dtype)
        acc = torch.zeros(B, hw, C, dtype=torch.float32, device=cam.device)
        for (q, k, scale), wl in zip(qk, wt):
            if not bool((wl > 0).any()):
                continue
            for g in range(groups):
                vv = v[:, None, :, g * d:(g + 1) * d].expand(B, heads, hw + 1, d)
                o = F.scaled_dot_product_attention(q, k, vv, scale=scale)[:, :, 1:].float()  # [B, H, hw, d]
                c0, c1 = g * d, min(C, (g + 1) * d)
                acc[:, :, c0:c1] += torch.einsum("bhnd,h->bnd", o[..., : c1 - c0], wl)
    return acc.transpose(1, 2).reshape(B, C, h, w)


# ------------------------------------------------------------------------------------------
# fitting on image labels
# ------------------------------------------------------------------------------------------
def aggregation_features(cam: torch.Tensor, qk) -> torch.Tensor:
    """``g[b, l, h, c] = mean_i Σ_j A_lh[b, i, j] · cam[b, c, j]`` (patch tokens only): the
    global average of each block's and head's refined CAM, ``[B, L, H, C]`` float32. The
    global average of the weighted refinement is then ``Σ_lh w_lh g[b, l, h, c]``."""
    qk = _qk_list(qk)
    B, C, h, w = cam.shape
    flat = cam.reshape(B, C, h * w).float()
    out = []
    with _no_autocast(cam.device):
        for q, k, scale in qk:
            a = ((q.float() @ k.float().transpose(-2, -1)) * scale).softmax(-1)[:, :, 1:, 1:]  # [B, H, hw, hw]
            out.append(torch.einsum("bhj,bcj->bhc", a.mean(2), flat))
    return torch.stack(out, 1)


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of the average precision."""
    aps = []
    for c in range(labels.shape[1]):
        y = labels[:, c] > 0.5
        if not y.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = y[order]
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(prec[hits].mean()))
    return float(np.mean(aps)) if aps else float("nan")


def fit_weights(features, labels, *, steps: int = 50, lr: float = 0.1, init=None) -> tuple[torch.Tensor, dict]:
    """Fit ``w = softmax(θ)`` (``[L, H]``) to minimise the multi-label BCE of
    ``Σ_lh w_lh features[:, l, h, :]`` (``[n, L, H, K]``, :func:`aggregation_features`) against
    ``labels`` (``[n, K]`` multi-hot image labels), full batch, Adam.

    ``init``: starting weights (default uniform = the paper's AA). Returns ``(weights,
    history)`` with ``history = {"loss": [...], "map_start", "map_end"}`` (loss before each step
    and after the last; mAP of the pooled scores over the fitted images, in [0, 1])."""
    feats = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    if feats.dim() != 4 or y.dim() != 2 or feats.shape[0] != y.shape[0] or feats.shape[-1] != y.shape[-1]:
        raise ValueError(f"features must be [n, L, H, K] and labels [n, K], got {tuple(feats.shape)} and {tuple(y.shape)}")
    if int(steps) < 0 or lr <= 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got {steps}, {lr}")
    L, H = feats.shape[1:3]
    if init is None:
        theta = torch.zeros(L * H)
    else:
        w0 = _check_weights(init, L, H).flatten()
        theta = torch.log(w0.clamp_min(1e-12))
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)

    def scores(th):
        return torch.einsum("nlhk,lh->nk", feats, th.softmax(0).view(L, H))

    def loss_of(th):
        return F.binary_cross_entropy_with_logits(scores(th), y)

    with torch.no_grad():
        map_start = _average_precision(scores(theta).numpy(), y.numpy())
    history: dict = {"loss": []}
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad()
            loss = loss_of(theta)
            history["loss"].append(float(loss.detach()))
            loss.backward()
            opt.step()
    with torch.no_grad():
        history["loss"].append(float(loss_of(theta)))
        history["map_start"] = map_start
        history["map_end"] = _average_precision(scores(theta).numpy(), y.numpy())
        w = theta.detach().softmax(0).view(L, H)
    return w, history


def fit_aggregation(model, items: Iterable, *, scale: float = 160, square: bool = True, steps: int = 50,
                    lr: float = 0.1, device=None, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Fit the block and head weights of ``model`` (frozen) on ``items``: ``(image, label)``
    pairs or items with ``.image`` and ``.label`` (e.g. a training split's
    :class:`~transcam_nb.data.voc.VOCDataset` in ``"cls"`` mode; **image labels only**).

    One forward pass per image at ``scale`` (as :func:`transcam_nb.cam.scaled_size`), no flip,
    every block's queries and keys kept; the foreground CAM channels ``1..K`` give the
    :func:`aggregation_features`, then :func:`fit_weights` (``steps``, ``lr``). Returns
    ``(weights [depth, heads], history)``; ``history`` also holds ``num_images``."""
    from tqdm.auto import tqdm

    from .cam import _to_pil, preprocess, scaled_size

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    depth = int(getattr(model, "depth", 12))
    patch = int(getattr(model, "patch_size", 16))
    feats, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for it in tqdm(items, desc="aggregation features", disable=not progress):
                image, label = (it.image, it.label) if hasattr(it, "image") else it
                if label is None:
                    raise ValueError("fit_aggregation needs image labels; an item has none")
                pil = _to_pil(image)
                hh, ww = scaled_size(pil.size[::-1], scale, square=square, patch=patch)
                x = torch.from_numpy(preprocess(pil, (hh, ww)))[None].to(dev)
                out = model(x, keep_qk=list(range(depth)))
                feats.append(aggregation_features(out.cam[:, 1:].float(), out.qk)[0].cpu())
                labels.append(torch.as_tensor(np.asarray(label, dtype=np.float32)))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("fit_aggregation got no images")
    w, hist = fit_weights(torch.stack(feats), torch.stack(labels), steps=steps, lr=lr)
    hist["num_images"] = len(feats)
    return w, hist


# ------------------------------------------------------------------------------------------
# a refinement variant with given weights
# ------------------------------------------------------------------------------------------
def learned_variant(weights, name: str = LEARNED) -> dict:
    """Register the refinement "Eq. 5 with ``A_w``" for ``weights`` (``[depth, heads]``) and
    return ``{name: (method, "AA")}`` to add to a variants dict (:func:`transcam_nb.cam.multiscale_variants`,
    :func:`transcam_nb.pipeline.variants.evaluate_variants`). The method name is ``"learned-<hash>"``, a
    hash of the weights, so cached results of other weights are never reused. A variant with
    other blocks than AA uses the weights of those blocks only."""
    wt = torch.as_tensor(weights, dtype=torch.float32)
    if wt.dim() != 2:
        raise ValueError(f"weights must be [blocks, heads], got shape {tuple(wt.shape)}")
    w = _check_weights(wt, *wt.shape).cpu()
    digest = hashlib.sha256(np.round(w.numpy().astype(np.float64), 8).tobytes()).hexdigest()[:10]
    method = f"learned-{digest}"

    def fn(cam, att, blocks: Sequence[int], reduce: str = "sum"):
        return refine_learned(cam, att.qk(blocks), w[list(blocks)])

    register_refinement(method, "qk", fn, about="Eq. 5 with learned block and head weights (transcam_nb.aggregation)")
    return {name: (method, "AA")}
