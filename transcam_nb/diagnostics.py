"""Diagnostics: is the attention affinity-like, and does the CAM under-cover?

TransCAM (Eq. 5, ``M* = A* · M``) helps only if a token's attention row stays mostly on
tokens of *its own* object (an object query gathers its object's scores) and a background
token's row stays mostly on background (a background query gathers background, i.e. low,
scores). And it is needed only if plain CAM under-covers objects (fires on the
discriminative part). This module measures both on the embedded benchmark, whose instance
masks (:mod:`transcam_nb.data.synthetic`) say which token belongs to which object.

Attention diagnostic (per block ``l`` and for the sum over blocks, Eq. 3)
    Every token ``j`` of the ``h × w`` grid gets its membership ``f_o(j)``: the share of its
    pixels that belong to object ``o`` (``o = 0``: background, decoys included), measured on
    the instance mask by area averaging. A *query* is an object token when ``f_o ≥ 0.5`` for
    an object, a background token when ``f_0 ≥ 0.5`` (mixed tokens are not queries). For a
    query ``i`` with row ``a = A*_l[i, :]`` (patch-to-patch part, Eq. 4), the share that stays
    home is ``Σ_j a_j f_o(j) / Σ_j a_j``. Reported: the mean over all such queries of the
    dataset, per block, for object queries (``obj_to_own``) and background queries
    (``bg_to_bg``), and the same with uniform attention (``a_j`` constant) as a baseline.
    Affinity-like attention has ``obj_to_own`` well above and ``bg_to_bg`` at or above its
    uniform baseline; the from-scratch failure recorded in docs/tiny-findings.md (part 1) is ``bg_to_bg`` far *below*
    uniform in deep blocks (background looks at the objects, and ``A @ CAM`` paints it).

CAM coverage / precision at a threshold ``t`` (normalised maps, as the pseudo labels see them)
    ``coverage``: mean over objects of the fraction of the object's pixels where its class
    map exceeds ``t`` (also on the emblem part and on the rest of the body, via
    :func:`transcam_nb.data.synthetic.object_coverage`); ``precision``: over the dataset, the
    fraction of above-``t`` pixels of each present class's map that lie on ground-truth
    pixels of that class. Low coverage with high precision = the partial activation TransCAM
    addresses; high coverage with low precision = over-spreading.

:func:`evaluate_refinements` runs the whole comparison in one pass per image:
one forward per scale and flip (with every block's attention), then each variant (CAM,
TransCAM, AS, AD, ClsAttn, AttnAgg, rollout) is refined, fused over scales and flips and
normalised exactly as :mod:`transcam_nb.cam` does (docs/reference.md §3), and scored with the
τ sweep of :mod:`transcam_nb.metrics`, a fixed τ, coverage/precision and the attention
diagnostic.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .metrics import DEFAULT_THRESHOLDS
from .refine import VARIANT_ALIASES
from .refine import VARIANTS as _REFINE_VARIANTS

__all__ = [
    "VARIANTS",
    "token_membership",
    "attention_shares",
    "AttentionDiagnostic",
    "CoveragePrecision",
    "attention_diagnostic",
    "evaluate_refinements",
]

#: the refinement variants by their short names: a view of the one table,
#: :data:`transcam_nb.refine.VARIANTS` (short name -> (refine method, blocks))
VARIANTS: dict[str, tuple[str, object]] = {k: _REFINE_VARIANTS[v] for k, v in VARIANT_ALIASES.items()}


# --------------------------------------------------------------------------------------
# attention diagnostic
# --------------------------------------------------------------------------------------
def token_membership(instance_mask: np.ndarray, num_objects: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """Share of each token's pixels that belong to each object: ``[1 + num_objects, h·w]``.

    ``instance_mask``: H×W int (0 = background, ``o`` = object ``o``; other values are
    treated as background); row 0 is the background share. Area averaging
    (:func:`torch.nn.functional.adaptive_avg_pool2d`) maps the image onto the ``h × w`` grid,
    so the grid need not divide the image size. Columns sum to 1.
    """
    import torch
    import torch.nn.functional as F

    m = np.asarray(instance_mask).astype(np.int64)
    if m.ndim != 2:
        raise ValueError(f"instance_mask must be H×W, got shape {m.shape}")
    m = np.where((m >= 0) & (m <= num_objects), m, 0)
    onehot = F.one_hot(torch.from_numpy(m), num_objects + 1).permute(2, 0, 1).float()[None]
    frac = F.adaptive_avg_pool2d(onehot, tuple(int(v) for v in grid_hw))[0]
    return frac.reshape(num_objects + 1, -1).numpy().astype(np.float64)


def attention_shares(attn: np.ndarray, membership: np.ndarray, min_query_frac: float = 0.5) -> dict:
    """Home shares of one image's attention (see the module docstring).

    ``attn``: ``[L, N, N]`` head-mean attention of L blocks (class token at 0, ``N = 1 + h·w``)
    or ``[L, hw, hw]`` already patch-to-patch; ``membership``: ``[1 + n_obj, hw]`` from
    :func:`token_membership`. Returns sums and counts (to pool over a dataset):
    ``obj_sum [L]``, ``obj_uniform_sum``, ``obj_n``, ``bg_sum [L]``, ``bg_uniform_sum``, ``bg_n``.
    """
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    hw = membership.shape[1]
    if a.shape[-1] == hw + 1:
        a = a[:, 1:, 1:]
    if a.shape[-1] != hw or a.shape[-2] != hw:
        raise ValueError(f"attention is {a.shape} but the membership has {hw} tokens (expected [L, {hw + 1}, "
                         f"{hw + 1}] or [L, {hw}, {hw}])")
    L = a.shape[0]
    a = a / np.clip(a.sum(-1, keepdims=True), 1e-12, None)  # share of the patch-to-patch mass
    n_obj = membership.shape[0] - 1
    obj_sum, bg_sum = np.zeros(L), np.zeros(L)
    obj_u = bg_u = 0.0
    obj_n = bg_n = 0
    # object queries: tokens that are mostly one object
    for o in range(1, n_obj + 1):
        q = np.flatnonzero(membership[o] >= min_query_frac)
        if q.size == 0:
            continue
        obj_sum += (a[:, q, :] @ membership[o]).sum(-1)
        obj_u += q.size * membership[o].mean()
        obj_n += q.size
    q = np.flatnonzero(membership[0] >= min_query_frac)
    if q.size:
        bg_sum += (a[:, q, :] @ membership[0]).sum(-1)
        bg_u += q.size * membership[0].mean()
        bg_n += q.size
    return dict(obj_sum=obj_sum, obj_uniform_sum=obj_u, obj_n=obj_n, bg_sum=bg_sum, bg_uniform_sum=bg_u, bg_n=bg_n)


class AttentionDiagnostic:
    """Pools :func:`attention_shares` over a dataset, per block and for the sum of all blocks."""

    def __init__(self, depth: int = 12, min_query_frac: float = 0.5):
        self.depth, self.min_query_frac = int(depth), float(min_query_frac)
        self.obj = np.zeros(depth + 1)
        self.bg = np.zeros(depth + 1)
        self.obj_u = self.bg_u = 0.0
        self.obj_n = self.bg_n = 0
        self.images = 0

    def update(self, attn: np.ndarray, membership: np.ndarray) -> "AttentionDiagnostic":
        """``attn``: ``[depth, N, N]`` per-block head-mean attention of one image."""
        a = np.asarray(attn, dtype=np.float64)
        if a.shape[0] != self.depth:
            raise ValueError(f"expected {self.depth} blocks of attention, got {a.shape[0]}")
        a = np.concatenate([a, a.sum(0, keepdims=True)], 0)  # + the 12-block sum (Eq. 3)
        s = attention_shares(a, membership, self.min_query_frac)
        self.obj += s["obj_sum"]
        self.bg += s["bg_sum"]
        self.obj_u += s["obj_uniform_sum"]
        self.bg_u += s["bg_uniform_sum"]
        self.obj_n += s["obj_n"]
        self.bg_n += s["bg_n"]
        self.images += 1
        return self

    def result(self) -> dict:
        o = self.obj / max(1, self.obj_n)
        b = self.bg / max(1, self.bg_n)
        half = self.depth // 2
        return {
            "images": self.images,
            "object_queries": self.obj_n,
            "background_queries": self.bg_n,
            "obj_to_own": [round(float(v), 4) for v in o[: self.depth]],
            "obj_to_own_sum": round(float(o[self.depth]), 4),
            "obj_to_own_uniform": round(float(self.obj_u) / max(1, self.obj_n), 4),
            "bg_to_bg": [round(float(v), 4) for v in b[: self.depth]],
            "bg_to_bg_sum": round(float(b[self.depth]), 4),
            "bg_to_bg_uniform": round(float(self.bg_u) / max(1, self.bg_n), 4),
            "bg_to_bg_mean_shallow": round(float(b[:half].mean()), 4),
            "bg_to_bg_mean_deep": round(float(b[half : self.depth].mean()), 4),
            "obj_to_own_mean_shallow": round(float(o[:half].mean()), 4),
            "obj_to_own_mean_deep": round(float(o[half : self.depth].mean()), 4),
        }


# --------------------------------------------------------------------------------------
# coverage / precision
# --------------------------------------------------------------------------------------
class CoveragePrecision:
    """Object coverage and class precision of normalised CAMs at a threshold, pooled over images."""

    def __init__(self, threshold: float = 0.3):
        self.threshold = float(threshold)
        self.cov, self.part_cov, self.body_cov = [], [], []
        self.hits = 0
        self.above = 0

    def update(self, cams: np.ndarray, classes: Sequence[int], gt: np.ndarray, objects: list[dict]) -> "CoveragePrecision":
        """``cams`` ``[K, H, W]`` normalised maps of the present ``classes`` (0-based); ``gt`` the
        class mask (0 bg, k+1 = class k); ``objects`` from :func:`synthetic.instance_masks`."""
        from .data.synthetic import object_coverage

        cams = np.asarray(cams)
        classes = [int(c) for c in classes]
        if cams.shape[0] != len(classes):
            raise ValueError(f"{cams.shape[0]} maps for {len(classes)} classes")
        num = max([o["class_index"] for o in objects] + classes + [0]) + 1
        full = np.zeros((num,) + cams.shape[1:], np.float32)
        for m, c in zip(cams, classes):
            full[c] = m
        for r in object_coverage(full, objects, self.threshold):
            self.cov.append(r["coverage"])
            self.part_cov.append(r["part_coverage"])
            self.body_cov.append(r["body_coverage"])
        for m, c in zip(cams, classes):
            on = m > self.threshold
            self.above += int(on.sum())
            self.hits += int((on & (gt == c + 1)).sum())
        return self

    def result(self) -> dict:
        nm = lambda v: round(float(np.nanmean(v)), 4) if len(v) else float("nan")
        return {"threshold": self.threshold, "objects": len(self.cov), "coverage": nm(self.cov),
                "part_coverage": nm(self.part_cov), "body_coverage": nm(self.body_cov),
                "precision": round(self.hits / self.above, 4) if self.above else float("nan")}


# --------------------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------------------
def _dataset(root, split):
    from .data.voc import VOCDataset

    return VOCDataset(root, split, mode="infer", check_files=False)


def attention_diagnostic(model, root, split: str = "val", *, size: int | None = None, limit: int | None = None,
                         device=None, progress: bool = True) -> dict:
    """The attention diagnostic of ``model`` (any number of outputs, e.g. a pretext checkpoint)
    on the benchmark at ``root``: original images resized to ``size`` (default: their size)."""
    import torch
    from tqdm.auto import tqdm

    from .cam import preprocess
    from .data.synthetic import load_instances
    from .data.voc import load_mask

    ds = _dataset(root, split)
    inst = load_instances(ds.root)
    device = device or next(model.parameters()).device
    diag = AttentionDiagnostic(len(model.blocks))
    n = len(ds) if limit is None else min(limit, len(ds))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in tqdm(range(n), desc="attention diagnostic", disable=not progress, dynamic_ncols=True):
                s = ds[i]
                H, W = s.image.shape[:2]
                h, w = (size, size) if size else (H, W)
                x = torch.from_numpy(preprocess(s.image, (h, w)))[None].to(device)
                attn = model(x, return_attn=True).attn[:, 0].float().cpu().numpy()
                objm = load_mask(ds.root / "SegmentationObject" / f"{s.id}.png")
                mem = token_membership(objm, len(inst[s.id]["objects"]), (h // model.patch_size, w // model.patch_size))
                diag.update(attn, mem)
    finally:
        model.train(was)
    return diag.result()


def evaluate_refinements(
    model,
    root,
    split: str = "val",
    *,
    variants: Sequence[str] = tuple(VARIANTS),
    scales: Sequence[int] = (128,),
    flip: bool = True,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fixed_taus: Sequence[float] = (0.25, 0.3),
    coverage_threshold: float = 0.3,
    limit: int | None = None,
    start: int = 0,
    device=None,
    progress: bool = True,
) -> dict:
    """Score every refinement variant of a trained WSSS classifier on ``root``/``split``.

    ``start``: skip the first images of the split (e.g. choose settings on train images the
    pseudo-label targets do not score); ``limit``: how many images from there.

    Per image, :func:`transcam_nb.cam.multiscale_variants` runs the original and its flip once
    per scale (square resize, as the authors) with every block's attention kept and refines,
    fuses and normalises each variant exactly as :func:`transcam_nb.cam.multiscale_cam` does
    (``variants``: short names of :data:`VARIANTS` or display names of
    :data:`transcam_nb.refine.VARIANTS`; results are keyed by the names given). The attention
    diagnostic uses the pass at the image's own size (else the last scale).

    Returns a dict: per variant ``best_miou``, ``best_tau``, ``miou_at`` (fixed τs),
    ``curve``, coverage/precision; plus ``attention`` and run facts.
    """
    from tqdm.auto import tqdm

    from .cam import multiscale_variants
    from .data.synthetic import instance_masks, load_instances
    from .data.voc import load_mask
    from .metrics import ThresholdSweep, sweep_summary
    from .refine import select_variants

    try:
        table = {v: next(iter(select_variants([v]).values())) for v in variants}
    except ValueError as e:
        raise InputError(f"{e} (--variants)") from None
    thr = sorted(set([round(float(t), 6) for t in thresholds] + [round(float(t), 6) for t in fixed_taus]))
    ds = _dataset(root, split)
    inst = load_instances(ds.root)
    K = len(ds.class_names)
    if not 0 <= start < len(ds):
        raise ValueError(f"start={start} is outside the split's {len(ds)} images")
    n = len(ds) - start if limit is None else min(limit, len(ds) - start)
    sweeps = {v: ThresholdSweep(thr, num_classes=K + 1) for v in variants}
    covs = {v: CoveragePrecision(coverage_threshold) for v in variants}
    diag = AttentionDiagnostic(len(model.blocks))
    t0 = time.perf_counter()
    for i in tqdm(range(start, start + n), desc="evaluate variants", disable=not progress, dynamic_ncols=True):
        s = ds[i]
        H, W = s.image.shape[:2]
        done = []

        def diagnose(p, s=s, H=H, W=W, done=done):
            if done or not (p.size_hw == (H, W) or p.index == len(scales) - 1) or p.flipped[0]:
                return
            h, w = p.size_hw
            objm = load_mask(ds.root / "SegmentationObject" / f"{s.id}.png")
            mem = token_membership(objm, len(inst[s.id]["objects"]), (h // model.patch_size, w // model.patch_size))
            diag.update(p.out.attn[:, 0].float().cpu().numpy(), mem)
            done.append(True)

        res = multiscale_variants(model, s.image, s.label, variants=table, scales=scales, flip=flip, square=True,
                                  device=device, return_attn=True, on_pass=diagnose)
        objects = instance_masks(ds.root, s.id, inst)
        for v, (cams, classes) in res.items():
            sweeps[v].update(cams, classes, s.mask)
            covs[v].update(cams, classes, s.mask, objects)
    res = {"images": n, "start": start, "split": split, "scales": list(scales), "flip": flip, "seconds": round(time.perf_counter() - t0, 1),
           "attention": diag.result(), "variants": {}}
    for v in variants:
        sw = sweeps[v].result()
        summ = sweep_summary(sw)
        curve = {f"{t:.2f}": round(m, 4) for t, m in zip(summ["taus"], summ["mious"])}
        res["variants"][v] = {
            "best_miou": round(summ["best_miou"], 4),
            "best_tau": summ["best_tau"],
            "miou_at": {f"{t:.2f}": round(float(sw.at(t).miou()), 4) for t in fixed_taus},
            "curve": curve,
            **covs[v].result(),
        }
    return res


def format_summary(res: dict) -> str:
    """A short text table of :func:`evaluate_refinements` output."""
    lines = []
    base = res["variants"].get("cam", {}).get("best_miou")
    for v, r in res["variants"].items():
        d = "" if base is None else f"  Δ {100 * (r['best_miou'] - base):+5.1f}"
        fx = " ".join(f"τ{t}:{m:.3f}" for t, m in r["miou_at"].items())
        lines.append(f"{v:9s} best {r['best_miou']:.3f} (τ {r['best_tau']:.2f}){d}  {fx}  "
                     f"cov {r['coverage']:.2f} (part {r['part_coverage']:.2f} body {r['body_coverage']:.2f}) "
                     f"prec {r['precision']:.2f}")
    a = res.get("attention")
    if a:
        lines.append("obj→own " + " ".join(f"{v:.2f}" for v in a["obj_to_own"]) +
                     f" | sum {a['obj_to_own_sum']:.2f} (uniform {a['obj_to_own_uniform']:.2f})")
        lines.append("bg→bg   " + " ".join(f"{v:.2f}" for v in a["bg_to_bg"]) +
                     f" | sum {a['bg_to_bg_sum']:.2f} (uniform {a['bg_to_bg_uniform']:.2f})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line: python -m transcam_nb diagnostics --checkpoint ... --data-root ... --json ...
# (its flags are defined in transcam_nb.cli with the other commands')
# --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m transcam_nb.diagnostics ARGS`` = ``python -m transcam_nb diagnostics ARGS``."""
    from .cli import main as cli_main

    return cli_main(["diagnostics", *(sys.argv[1:] if argv is None else argv)])


def run_cli(args) -> int:
    """Evaluate a trained classifier (every variant + the attention diagnostic), or with
    ``--attention-only`` any checkpoint of the profile's network (e.g. a pretext checkpoint)."""
    from .cli.common import UsageError, one_line, parse_floats, profile_from_args
    from .device import get_device, set_threads
    from .models import create_model, load_checkpoint
    from .models.checkpoints import CheckpointError, read_state_dict

    prof = profile_from_args(args, data_root=False)
    set_threads(prof.threads)
    try:
        sd = read_state_dict(args.checkpoint)
    except CheckpointError as e:
        raise UsageError(f"--checkpoint: {one_line(e)}") from None
    n_out = int(sd["trans_cls_head.weight"].shape[0]) if "trans_cls_head.weight" in sd else prof.num_fg + 1
    kw = dict(prof.model_overrides)
    kw["drop_path_rate"] = 0.0
    model = create_model(prof.model, num_classes=n_out, **kw)
    load_checkpoint(model, sd, drop_mismatched_heads=False)
    model.to(get_device(None if prof.device == "auto" else prof.device)).eval()
    if args.attention_only:
        res = {"attention": attention_diagnostic(model, args.data_root, args.split, size=args.size, limit=args.limit)}
    else:
        scales = tuple(int(s) for s in parse_floats(args.scales, "--scales")) if args.scales else tuple(prof.scales)
        taus = tuple(float(t) for t in parse_floats(args.fixed_taus, "--fixed-taus")) if args.fixed_taus else \
            tuple(sorted({round(float(prof.bg_threshold), 2), 0.3}))
        variants = args.variants.split(",") if args.variants else list(VARIANTS)
        res = evaluate_refinements(model, args.data_root, args.split, variants=variants,
                                   scales=scales, fixed_taus=taus, limit=args.limit)
        print(format_summary(res))
    res["checkpoint"] = str(args.checkpoint)
    res["data_root"] = str(args.data_root)
    if args.json:
        from .artifacts import write_json

        write_json(Path(args.json), res, indent=1)
    else:
        print(json.dumps(res.get("attention"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
