"""CAM refinement with transformer attention (paper Eq. 5, 9-11; docs/reference.md §2.6 and §10).

The pieces, in the paper's notation (Eq. 2-4, the block-aggregated attention map ``A*``, are in
:mod:`transcam_nb.attention` and re-exported here):

* **Eq. 5** ``M*_c = Γ(A* · Γ(M_c))``: every location gathers the class scores of the
  locations it attends to, using its own attention row: ``refined = A* @ cam`` with rows as
  queries (:func:`refine_cam` with ``method="transcam"``). The CAM that goes in is the *raw*
  3x3-conv class map, with no ReLU and no normalisation (docs/reference.md §2.6); ReLU and
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

**Eq. 5 without an N×N matrix** (:func:`refine_cam_sdpa`). ``A* · CAM = Σ_l mean_h
softmax(Q_lh K_lhᵀ / √d)[1:, 1:] · CAM`` is itself an attention with the CAM as the values:
give the class token a zero value row (that drops column 0), slice row 0 off the output, and
call :func:`torch.nn.functional.scaled_dot_product_attention` per block on the queries and keys
the model kept (``model(x, keep_qk=blocks)``). No attention matrix is stored; the fused kernel
does the work. ``clsattn`` needs only the class token's query row, an ``N``-vector per head.

**The refinement registry.** :data:`REFINEMENTS` maps each method name to a
:class:`Refinement`: what the forward pass must keep (``needs``) and the function that turns a
raw CAM plus that attention into the refined map, with an optional ``fused`` implementation
that needs only queries and keys. :func:`forward_request` turns a list of ``(method, blocks)``
into the model's keyword arguments, and :class:`PassAttention` hands each function what it
asked for. :mod:`transcam_nb.cam` knows nothing about individual methods. A new refinement is
one function plus one :func:`register_refinement` call. :data:`VARIANTS` is the one table of
named variants (paper Tables 2-3 plus rollout) that the book, the pipeline and the diagnostics
share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .attention import (  # noqa: F401 (re-exported)
    BLOCK_PRESETS,
    _as_tensor,
    _float_dtype,
    _no_autocast,
    _per_block,
    attention_map,
    attention_rollout,
    head_mean,
    resolve_blocks,
)

__all__ = [
    "METHODS",
    "BLOCK_PRESETS",
    "resolve_blocks",
    "head_mean",
    "attention_map",
    "attention_rollout",
    "refine_cam",
    "refine_cam_sdpa",
    "cam_box_mask",
    "affinity_refine",
    "Refinement",
    "REFINEMENTS",
    "register_refinement",
    "ATTENTION_IMPLS",
    "forward_request",
    "PassAttention",
    "VARIANTS",
    "VARIANT_ALIASES",
    "ABLATION_VARIANTS",
    "select_variants",
]

#: refinement methods understood by :func:`refine_cam` (the explicit, N×N implementations)
METHODS = ("transcam", "clsattn", "attnagg", "rollout", "none")

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


# ------------------------------------------------------------------------------------------
# Eq. 5 and Eq. 9-10 from queries and keys: no N×N matrix
# ------------------------------------------------------------------------------------------
def _qk_list(qk) -> list:
    if isinstance(qk, dict):
        qk = [qk[b] for b in sorted(qk)]
    qk = list(qk)
    if not qk:
        raise ValueError("refine_cam_sdpa needs the queries and keys of at least one block")
    return qk


def _sdpa_inputs(cam: torch.Tensor, qk) -> tuple[list, int, int, int, int]:
    """The checked ``(qk list, B, C, h, w)`` of a CAM and the queries/keys that refine it."""
    qk = _qk_list(qk)
    if cam.dim() != 4:
        raise ValueError(f"cam must be [B, C, h, w], got shape {tuple(cam.shape)}")
    B, C, h, w = cam.shape
    q0 = qk[0][0]
    if q0.dim() != 4 or q0.shape[0] != B or q0.shape[2] != h * w + 1:
        raise ValueError(
            f"queries must be [B={B}, heads, N={h * w + 1}, d] for a CAM grid of {h}x{w} (class token first); "
            f"got {tuple(q0.shape)}"
        )
    return qk, B, C, h, w


def refine_cam_sdpa(cam: torch.Tensor, qk, method: str = "transcam", *, reduce: str = "sum") -> torch.Tensor:
    """Eq. 5 (``"transcam"``) or Eq. 9-10 (``"clsattn"``) from each block's queries and keys.

    Parameters
    ----------
    cam
        Raw CAM ``[B, C, h, w]``.
    qk
        The chosen blocks' ``(q, k, scale)`` triples (``model(x, keep_qk=blocks).qk``, a dict
        or a sequence), ``q`` and ``k`` of shape ``[B, heads, N, d]`` with ``N = 1 + h·w``.
    reduce
        ``"sum"`` over the blocks (the authors' code) or ``"mean"`` (the paper's text).

    For ``"transcam"`` each block contributes ``mean_h SDPA(q, k, [0; CAM])[1:]``: the
    attention's own softmax (Eq. 2, fused, never stored) weights the CAM values; the class
    token's zero value row drops column 0 of ``A`` and slicing drops row 0, which is Eq. 4.
    The attention runs in the dtype of ``q`` (bf16 under a bf16 forward, with float32
    accumulation inside the kernel); the sum over heads and blocks is float32. For
    ``"clsattn"`` only the class token's query row is formed (``[B, heads, 1, N]``, float32).
    Equals :func:`refine_cam` on the explicit maps within float rounding (tested).
    """
    if method not in ("transcam", "clsattn"):
        raise ValueError(f"refine_cam_sdpa implements 'transcam' and 'clsattn', not {method!r}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    qk, B, C, h, w = _sdpa_inputs(cam, qk)
    hw, q0 = h * w, qk[0][0]
    heads = q0.shape[1]
    with _no_autocast(cam.device):
        acc = torch.zeros((B, hw, C) if method == "transcam" else (B, hw), dtype=torch.float32, device=cam.device)
        if method == "transcam":
            # values: [0; cam] per token, shared by the heads, in groups of d columns zero-padded to d
            # (the fused CPU kernel needs value width == head width; other widths fall back to a ~5x
            # slower path)
            d = q0.shape[-1]
            groups = -(-C // d)
            v = F.pad(cam.reshape(B, C, hw).transpose(1, 2).float(), (0, groups * d - C, 1, 0))  # [B, N, G·d]
            v = v.to(q0.dtype)
        for q, k, scale in qk:
            if method == "transcam":
                for g in range(groups):
                    vv = v[:, None, :, g * d:(g + 1) * d].expand(B, heads, hw + 1, d)
                    o = F.scaled_dot_product_attention(q, k, vv, scale=scale)  # [B, heads, N, d]
                    c0, c1 = g * d, min(C, (g + 1) * d)
                    acc[:, :, c0:c1] += o[:, :, 1:, : c1 - c0].float().mean(dim=1)
            else:
                logits = (q[:, :, :1].float() @ k.float().transpose(-2, -1)) * scale  # [B, heads, 1, N]
                acc += logits.softmax(dim=-1)[:, :, 0, 1:].mean(dim=1)
        if reduce == "mean":
            acc = acc / len(qk)
        if method == "transcam":
            return acc.transpose(1, 2).reshape(B, C, h, w)
        return (cam.float().reshape(B, C, hw) * acc[:, None, :]).reshape(B, C, h, w)


# ------------------------------------------------------------------------------------------
# the refinement registry
# ------------------------------------------------------------------------------------------
#: what a refinement may ask the forward pass to keep
NEEDS = ("none", "attn_sum", "attn", "qk")
#: ``attention=`` choices: ``"sdpa"`` uses a method's fused implementation where it has one
ATTENTION_IMPLS = ("sdpa", "explicit")


class PassAttention:
    """The attention one forward pass kept, served to the refinement functions.

    ``block_sum(blocks)`` is the block-summed head-mean map ``[B, N, N]`` (the streaming
    ``attn_sum`` when the pass accumulated exactly these blocks, else summed from the per-block
    maps); ``per_block()`` the ``[L, B, N, N]`` maps; ``qk(blocks)`` the kept queries and keys.
    """

    def __init__(self, out, sum_blocks: Sequence[int] | None = None):
        self.out = out
        self.sum_blocks = list(sum_blocks) if sum_blocks is not None else None

    def per_block(self) -> torch.Tensor:
        if getattr(self.out, "attn", None) is None:
            raise ValueError("this refinement needs the per-block attention maps (model(x, return_attn=True))")
        return self.out.attn

    def block_sum(self, blocks: Sequence[int]) -> torch.Tensor:
        s = getattr(self.out, "attn_sum", None)
        if s is not None and self.sum_blocks == list(blocks):
            return s
        return attention_map(self.per_block(), list(blocks), drop_cls_token=False)

    def qk(self, blocks: Sequence[int]) -> list:
        kept = getattr(self.out, "qk", None)
        if kept is None or any(b not in kept for b in blocks):
            raise ValueError(f"this refinement needs the queries and keys of blocks {list(blocks)} (model(x, keep_qk=...))")
        return [kept[b] for b in blocks]


# ------------------------------------------------------------------------------------------
# CLIP-ES-style affinity (Lin et al., CVPR 2023): an extra variant, not in the TransCAM paper
# ------------------------------------------------------------------------------------------
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

    All switches on is the CLIP-ES recipe; each off gives one row of the ingredient ablation
    (:data:`ABLATION_VARIANTS`). ``cam`` ``[B, C, h, w]`` (numpy in, numpy out), ``attn``
    per-block ``[L, B, N, N]`` (or ``[L, B, heads, N, N]`` / a list). Returns ``[B, C, h, w]``.
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


@dataclass(frozen=True)
class Refinement:
    """One refinement method.

    ``fn(cam, attention: PassAttention, blocks, reduce) -> refined [B, C, h, w]`` uses what
    ``needs`` names (``"none"``, ``"attn_sum"``: the block-summed map, ``"attn"``: every block's
    map, ``"qk"``: queries and keys). ``fused``, if given, is an implementation with
    ``needs="qk"`` that forms no ``N × N`` matrix; it is used when ``attention="sdpa"``.
    ``per_channel``: the method refines each class map on its own, so callers may pass only
    the present classes' channels (every method here does).
    """

    name: str
    needs: str
    fn: Callable
    fused: Callable | None = None
    about: str = ""
    per_channel: bool = True

    def impl(self, attention: str = "sdpa") -> tuple[str, Callable]:
        """``(needs, function)`` for ``attention="sdpa"`` or ``"explicit"``."""
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
        if attention == "sdpa" and self.fused is not None:
            return "qk", self.fused
        return self.needs, self.fn


#: method name -> :class:`Refinement` (add new ones with :func:`register_refinement`)
REFINEMENTS: dict[str, Refinement] = {}


def register_refinement(name: str, needs: str, fn: Callable, *, fused: Callable | None = None,
                        about: str = "", per_channel: bool = True) -> Refinement:
    """Add (or replace) a refinement method; see :class:`Refinement` for the function's signature."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, got {needs!r}")
    REFINEMENTS[name] = r = Refinement(name, needs, fn, fused, about, per_channel)
    return r


register_refinement("none", "none", lambda cam, att, blocks, reduce="sum": cam, about="the baseline CAM (Eq. 1)")
register_refinement(
    "transcam", "attn_sum",
    lambda cam, att, blocks, reduce="sum": refine_cam(cam, _reduced(att.block_sum(blocks), blocks, reduce), "transcam"),
    fused=lambda cam, att, blocks, reduce="sum": refine_cam_sdpa(cam, att.qk(blocks), "transcam", reduce=reduce),
    about="Eq. 5: A* · CAM",
)
register_refinement(
    "clsattn", "attn_sum",
    lambda cam, att, blocks, reduce="sum": refine_cam(cam, _reduced(att.block_sum(blocks), blocks, reduce), "clsattn"),
    fused=lambda cam, att, blocks, reduce="sum": refine_cam_sdpa(cam, att.qk(blocks), "clsattn", reduce=reduce),
    about="Eq. 9-10: class-token attention times the CAM",
)
register_refinement(
    "attnagg", "attn_sum",
    lambda cam, att, blocks, reduce="sum": refine_cam(cam, _reduced(att.block_sum(blocks), blocks, reduce), "attnagg"),
    about="Eq. 11: A*ᵀ · CAM",
)
register_refinement(
    "rollout", "attn",
    lambda cam, att, blocks, reduce="sum": refine_cam(cam, att.per_block(), "rollout", blocks=blocks),
    about="attention rollout in place of A* (not in the paper)",
)


#: the affinity refinement and its ingredient ablation: method -> affinity_refine switches
AFFINITY_METHODS: dict[str, dict] = {
    "affinity": {},
    "affinity_relu": {"box_mask": False, "sinkhorn": False},
    "affinity_box": {"relu_cam": False, "sinkhorn": False},
    "affinity_sinkhorn": {"box_mask": False},
}
for _name, _switches in AFFINITY_METHODS.items():
    register_refinement(
        _name, "attn",
        lambda cam, att, blocks, reduce="sum", kw=_switches: affinity_refine(cam, att.per_block(), blocks=blocks, **kw),
        about="CLIP-ES-style affinity (Lin et al., CVPR 2023)" + (f", only {_switches}" if _switches else ""),
    )


def _reduced(a: torch.Tensor, blocks, reduce: str) -> torch.Tensor:
    return a / len(blocks) if reduce == "mean" else a


def get_refinement(method: str) -> Refinement:
    if method not in REFINEMENTS:
        raise ValueError(f"unknown method {method!r}; choose one of {tuple(REFINEMENTS)}")
    return REFINEMENTS[method]


def forward_request(requests: Iterable[tuple[str, Sequence[int]]], attention: str = "sdpa",
                    *, return_attn: bool = False) -> tuple[dict, list[int] | None]:
    """The model keyword arguments that serve every ``(method, blocks)`` of ``requests``.

    Returns ``(kwargs, sum_blocks)``: ``kwargs`` for ``model(x, **kwargs)`` and the block list
    the streaming ``attn_sum`` covers (``None`` if none). One block set of ``"attn_sum"``
    methods is summed on the fly; several, or any ``"attn"`` method (or ``return_attn``), keep
    the per-block maps instead. ``"qk"`` methods keep the union of their blocks' queries/keys.
    """
    need_attn = return_attn
    sum_sets: list[list[int]] = []
    qk_blocks: set[int] = set()
    for method, blocks in requests:
        needs, _ = get_refinement(method).impl(attention)
        if needs == "attn":
            need_attn = True
        elif needs == "attn_sum" and list(blocks) not in sum_sets:
            sum_sets.append(list(blocks))
        elif needs == "qk":
            qk_blocks.update(blocks)
    kw: dict = {}
    sum_blocks = None
    if len(sum_sets) > 1:
        need_attn = True
    elif sum_sets and not need_attn:
        kw["attn_blocks"] = sum_blocks = sum_sets[0]
    if need_attn:
        kw["return_attn"] = True
    if qk_blocks:
        kw["keep_qk"] = sorted(qk_blocks)
    return kw, sum_blocks


# ------------------------------------------------------------------------------------------
# the one table of named variants (paper Tables 2-3, plus rollout)
# ------------------------------------------------------------------------------------------
#: display name -> (method, blocks)
VARIANTS: dict[str, tuple[str, object]] = {
    "CAM": ("none", None),
    "TransCAM (AA)": ("transcam", "AA"),
    "AS (blocks 1-6)": ("transcam", "AS"),
    "AD (blocks 7-12)": ("transcam", "AD"),
    "ClsAttn": ("clsattn", "AA"),
    "AttnAgg": ("attnagg", "AA"),
    "Rollout": ("rollout", "AA"),
    "Affinity (CLIP-ES-style)": ("affinity", "last8"),
}
#: the ingredient ablation of the affinity variant (not in the default table; select by name)
ABLATION_VARIANTS: dict[str, tuple[str, object]] = {
    "A* · ReLU'd CAM": ("affinity_relu", "AA"),
    "A*, box-masked keys": ("affinity_box", "AA"),
    "Sinkhorn A · ReLU'd CAM": ("affinity_sinkhorn", "last8"),
}
#: short names (command lines) -> display name
VARIANT_ALIASES: dict[str, str] = {
    "cam": "CAM", "transcam": "TransCAM (AA)", "AS": "AS (blocks 1-6)", "AD": "AD (blocks 7-12)",
    "clsattn": "ClsAttn", "attnagg": "AttnAgg", "rollout": "Rollout",
    "affinity": "Affinity (CLIP-ES-style)",
}


def select_variants(names: Iterable[str] | None = None) -> dict[str, tuple[str, object]]:
    """``{display name: (method, blocks)}`` for ``names`` (display names or short aliases, or
    names of :data:`ABLATION_VARIANTS`); ``None`` gives every variant of :data:`VARIANTS`. An unknown name raises a ``ValueError`` listing the known ones."""
    if names is None:
        return dict(VARIANTS)
    out = {}
    for n in names:
        key = VARIANT_ALIASES.get(n, n)
        table = VARIANTS if key in VARIANTS else ABLATION_VARIANTS
        if key not in table:
            raise ValueError(f"unknown variant(s) {[n]}; known: {list(VARIANTS) + list(ABLATION_VARIANTS)} "
                             f"or {list(VARIANT_ALIASES)}")
        out[key] = table[key]
    return out
