"""Stage 6, DeepLab: trained on the randomwalk stage's labels (``train_deeplab.py``):
``DIR/segment/last.pt`` (resumable), ``model.pt``, ``log.jsonl``, then its multi-scale predictions
on the validation split ``DIR/segment/val_pred/<id>.png`` with ``metrics.json``."""
from __future__ import annotations

import time

from ..artifacts import config_hash
from ..weights import resolve_checkpoint
from .context import PipelineContext, cm_result, file_id

__all__ = ["run", "seg_config"]


def seg_config(ctx: PipelineContext):
    from ..config import get_seg_config

    over = dict(ctx.config.seg_overrides)
    over.setdefault("num_classes", ctx.num_fg + 1)
    return get_seg_config(ctx.config.segmentation, **over)


def run(ctx: PipelineContext) -> dict:
    """Stage 6: DeepLab trained on the random-walk labels (``train_deeplab.py``, docs/reference.md §8;
    resumes from ``last.pt``), then scored on the validation split with multi-scale + flip
    inference (and the CRF when the preset says so)."""
    from ..segmentation import (
        evaluate_segmentation,
        load_segmentation_model,
        train_segmentation,
    )
    from ..segmentation.train import _RESUME_FREE

    rw_done = ctx.require("randomwalk")
    scfg = seg_config(ctx)
    if ctx.config.seg_labels not in ("rw", "rw_crf"):
        raise ValueError(f"seg_labels must be 'rw' or 'rw_crf', got {ctx.config.seg_labels!r}")
    val_ids = ctx.val_ids()
    spec = {"randomwalk": rw_done["key"], "labels": ctx.config.seg_labels, "val_split": ctx.val_split,
            "val_ids": config_hash(val_ids), "n_val": len(val_ids),
            "config": {k: v for k, v in scfg.to_dict().items() if k not in _RESUME_FREE - {"test_scales", "test_flip",
                                                                                          "test_crf"}},
            "pretrained": file_id(resolve_checkpoint(scfg.pretrained_path)) if scfg.pretrained_path else None}
    key = ctx.begin("segment", spec)
    if ctx.finished("segment", key):
        return ctx.finished("segment", key)
    if ctx.shard[0] != 0:
        ctx.wait_until(lambda: ctx.done("segment") is not None, "DeepLab (trained by shard 0)")
        return ctx.require("segment")
    d = ctx.stage_dir("segment")
    t0 = time.time()
    labels = ctx.stage_dir("randomwalk") / ctx.config.seg_labels
    res = train_segmentation(scfg, None, labels, ctx.pseudo_ids(), d, device=ctx.device, resume=True,
                             progress=ctx.progress, from_scratch=ctx.config.from_scratch, image_dir=ctx.image_dir())
    if res.iteration < scfg.iters:
        raise RuntimeError(f"DeepLab training stopped at iteration {res.iteration} of {scfg.iters}")
    model = load_segmentation_model(res.model_path, device=ctx.device)
    cm = evaluate_segmentation(model, None, val_ids, scales=scfg.test_scales, flip=scfg.test_flip,
                               crf=scfg.test_crf or None, num_classes=ctx.num_fg + 1, save_dir=d / "val_pred",
                               progress=ctx.progress, image_dir=ctx.image_dir(ctx.val_split),
                               gt_of=lambda iid: ctx.mask(iid, ctx.val_split))
    result = {"iterations": res.iteration, "last_loss": res.last_loss, "val_split": ctx.val_split,
              "num_val": len(val_ids), "test_scales": list(scfg.test_scales), "test_flip": scfg.test_flip,
              "test_crf": scfg.test_crf, "labels": ctx.config.seg_labels, "num_train": len(ctx.pseudo_ids()),
              "deeplab_val": cm_result(cm)}
    return ctx.finish("segment", key, result, time.time() - t0)


