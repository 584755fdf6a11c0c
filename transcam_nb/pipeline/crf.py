"""Stage 3, CRF labels: the PSA training labels ``DIR/crf/la/<id>.png`` (τ = 0.60, confident
foreground) and ``DIR/crf/ha/<id>.png`` (τ = 0.25, confident background), argmax + dense CRF
(:func:`transcam_nb.postprocess.crf.make_la_ha_labels`), or PAR instead of the CRF with the
setting ``postprocess="par"``. Reads the cams stage's TransCAM maps."""
from __future__ import annotations

import time

from .context import PipelineContext, cm_result, pct, png_confusion, postprocess_spec, progress_bar

__all__ = ["run"]


def run(ctx: PipelineContext) -> dict:
    """Stage 3: the PSA training labels la (τ = 0.60) and ha (τ = 0.25) from the TransCAM maps,
    argmax + dense CRF (``crf_inference_label``; docs/reference.md §3, §7.3) or PAR
    (``postprocess="par"``)."""
    from ..postprocess.crf import make_la_ha_labels
    from ..pseudo import load_cams, save_label_png

    prof = ctx.profile
    cams_done = ctx.require("cams")
    thr = tuple(float(t) for t in prof.crf_thresholds)
    if len(thr) != 2:
        raise ValueError(f"profile.crf_thresholds must be (la, ha), two thresholds, got {prof.crf_thresholds}")
    ids = ctx.pseudo_ids()
    post = ctx.config.postprocess
    key = ctx.begin("crf", postprocess_spec({"cams": cams_done["key"], "thresholds": list(thr), "preset": "label",
                                             "n_labels": ctx.num_fg + 1}, post))
    if ctx.finished("crf", key):
        return ctx.finished("crf", key)
    d = ctx.stage_dir("crf")
    la_dir, ha_dir = d / "la", d / "ha"
    la_dir.mkdir(parents=True, exist_ok=True)
    ha_dir.mkdir(parents=True, exist_ok=True)

    def has(iid):
        return (la_dir / f"{iid}.png").is_file() and (ha_dir / f"{iid}.png").is_file()

    t0 = time.time()
    todo = [i for i in ctx.my_part(ids) if not has(i)]
    src = ctx.stage_dir("cams") / "transcam"
    for iid in progress_bar(todo, len(todo), f"crf {ctx.shard[0]}/{ctx.shard[1]}", ctx.progress):
        cams, classes = load_cams(src / f"{iid}.npz")
        la, ha = make_la_ha_labels(ctx.image(iid), cams, classes, thresholds=thr, num_classes=ctx.num_fg,
                                   postprocess=post)
        save_label_png(la_dir / f"{iid}.png", la)
        save_label_png(ha_dir / f"{iid}.png", ha)
    ctx.wait_until(lambda: all(has(i) for i in ids), "the CRF labels of the other shards")
    if ctx.done("crf") is not None:
        return ctx.done("crf")
    eval_ids = ctx.eval_ids()
    result = {"num_images": len(ids), "num_eval": len(eval_ids), "thresholds": list(thr), "postprocess": post}
    for name, folder in (("la", la_dir), ("ha", ha_dir)):
        result[name] = cm_result(png_confusion(ctx, folder, eval_ids, f"evaluate {name}"))
    # how much of the affinity labels is ignored (la says bg, ha says fg)
    from ..postprocess.affinity import affinity_labels
    from ..pseudo import load_label_png

    ign = tot = 0
    for iid in ids:
        a = affinity_labels(load_label_png(la_dir / f"{iid}.png"), load_label_png(ha_dir / f"{iid}.png"))
        ign += int((a == 255).sum())
        tot += a.size
    result["affinity_ignored_pct"] = pct(ign / max(tot, 1))
    return ctx.finish("crf", key, result, time.time() - t0)


