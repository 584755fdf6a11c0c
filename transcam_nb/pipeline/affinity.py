"""Stage 4, AffinityNet: trained on the crf stage's la/ha pairs (``train_aff.py``):
``DIR/affinity/affinity_last.pt`` (resumable), ``affinity_net.pt``, ``history.json``."""
from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import write_json
from .context import PipelineContext, file_id

__all__ = ["run", "affinity_config", "build_affinity_net"]


def affinity_config(ctx: PipelineContext):
    from ..config import get_affinity_preset

    over = dict(ctx.config.affinity_overrides)
    over.setdefault("seed", int(ctx.profile.seed))
    return get_affinity_preset(ctx.config.affinity, **over)


def build_affinity_net(ctx: PipelineContext, load_pretrained: bool = True):
    from ..postprocess.affinity import AffinityNet

    acfg = affinity_config(ctx)
    return AffinityNet(backbone=acfg.backbone,
                       pretrained_path=ctx.config.affinity_weights if load_pretrained else None)


def run(ctx: PipelineContext) -> dict:
    """Stage 4: train AffinityNet on the la/ha pairs (``train_aff.py``, docs/reference.md §7.1);
    resumes from ``affinity_last.pt``."""
    from ..postprocess.affinity_train import AffinityDataset, train_affinity

    crf_done = ctx.require("crf")
    acfg = affinity_config(ctx)
    free = ("device", "num_workers", "save_every", "bg", "beta", "logt")  # the last three: random walk
    spec = {"crf": crf_done["key"], "config": {k: v for k, v in acfg.to_dict().items() if k not in free},
            "weights": file_id(Path(ctx.config.affinity_weights)) if ctx.config.affinity_weights else None}
    key = ctx.begin("affinity", spec)
    if ctx.finished("affinity", key):
        return ctx.finished("affinity", key)
    if ctx.shard[0] != 0:
        ctx.wait_until(lambda: ctx.done("affinity") is not None, "AffinityNet (trained by shard 0)")
        return ctx.require("affinity")
    d = ctx.stage_dir("affinity")
    t0 = time.time()
    ids = ctx.pseudo_ids()
    crf_dir = ctx.stage_dir("crf")
    ds = AffinityDataset.from_folders(ctx.image_dir(), crf_dir / "la", crf_dir / "ha", ids=ids,
                                      crop_size=acfg.crop_size, color_jitter=acfg.color_jitter, flip=acfg.flip,
                                      seed=acfg.seed)
    resuming = (d / "affinity_last.pt").is_file()
    model = build_affinity_net(ctx, load_pretrained=not resuming)
    out = train_affinity(model, ds, acfg, out_dir=d, device=ctx.device, resume=True, progress=ctx.progress,
                         from_scratch=ctx.config.from_scratch)
    if out["final"] is None:
        raise RuntimeError(f"AffinityNet training stopped at step {out['step']} of {out['max_step']}")
    hist = out["history"]
    write_json(d / "history.json", hist)
    result = {"steps": out["step"], "backbone": acfg.backbone, "final_loss": hist[-1]["loss"] if hist else None,
              "weights": str(out["final"])}
    return ctx.finish("affinity", key, result, time.time() - t0)


