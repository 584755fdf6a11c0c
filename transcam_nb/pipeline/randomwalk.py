"""Stage 5, random walk: the cams stage's TransCAM maps diffused over the affinity stage's
learnt affinities (``infer_aff.py``): ``DIR/randomwalk/rw/<id>.png`` and, with the final dense
CRF (or PAR, with ``postprocess="par"``), ``rw_crf/<id>.png``."""
from __future__ import annotations

import time

from .affinity import affinity_config, build_affinity_net
from .context import PipelineContext, cm_result, png_confusion, postprocess_spec, progress_bar

__all__ = ["run"]


def run(ctx: PipelineContext) -> dict:
    """Stage 5: random walk of the TransCAM maps over the learnt affinities (``infer_aff.py``,
    docs/reference.md §7.2), without (``rw/``) and with (``rw_crf/``) the final dense CRF (or PAR:
    ``postprocess="par"``)."""
    import torch

    from ..postprocess.affinity import load_affinity_checkpoint
    from ..postprocess.random_walk import prepare_image, random_walk
    from ..pseudo import load_cams, save_label_png

    aff_done = ctx.require("affinity")
    cams_done = ctx.require("cams")
    acfg = affinity_config(ctx)
    ids = ctx.pseudo_ids()
    spec = {"affinity": aff_done["key"], "cams": cams_done["key"], "bg": acfg.bg, "beta": acfg.beta,
            "logt": acfg.logt, "radius": acfg.radius, "crf_preset": "label"}
    postprocess_spec(spec, ctx.config.postprocess)
    key = ctx.begin("randomwalk", spec)
    if ctx.finished("randomwalk", key):
        return ctx.finished("randomwalk", key)
    d = ctx.stage_dir("randomwalk")
    rw_dir, rwc_dir = d / "rw", d / "rw_crf"
    rw_dir.mkdir(parents=True, exist_ok=True)
    rwc_dir.mkdir(parents=True, exist_ok=True)

    def has(iid):
        return (rw_dir / f"{iid}.png").is_file() and (rwc_dir / f"{iid}.png").is_file()

    t0 = time.time()
    todo = [i for i in ctx.my_part(ids) if not has(i)]
    if todo:
        model = build_affinity_net(ctx, load_pretrained=False)
        load_affinity_checkpoint(model, ctx.stage_dir("affinity") / "affinity_net.pt")
        model.to(ctx.device).eval()
        src = ctx.stage_dir("cams") / "transcam"
        kw = dict(num_classes=ctx.num_fg, bg=acfg.bg, beta=acfg.beta, logt=acfg.logt, radius=acfg.radius,
                  stride=model.stride)
        for iid in progress_bar(todo, len(todo), f"random walk {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
            cams, classes = load_cams(src / f"{iid}.npz")
            image = ctx.image(iid)
            with torch.no_grad():
                aff = model.dense_affinity(prepare_image(image, model.stride, ctx.device), acfg.radius)
            save_label_png(rw_dir / f"{iid}.png", random_walk(cams, classes, aff, **kw))
            save_label_png(rwc_dir / f"{iid}.png", random_walk(cams, classes, aff, image, crf=True,
                                                                   postprocess=ctx.config.postprocess, **kw))
    ctx.wait_until(lambda: all(has(i) for i in ids), "the random walks of the other shards")
    if ctx.done("randomwalk") is not None:
        return ctx.done("randomwalk")
    eval_ids = ctx.eval_ids()
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "bg": acfg.bg, "beta": acfg.beta, "logt": acfg.logt,
              "postprocess": ctx.config.postprocess,
              "random_walk": cm_result(png_confusion(ctx, rw_dir, eval_ids, "evaluate rw")),
              "random_walk_crf": cm_result(png_confusion(ctx, rwc_dir, eval_ids, "evaluate rw+crf"))}
    return ctx.finish("randomwalk", key, result, time.time() - t0)


