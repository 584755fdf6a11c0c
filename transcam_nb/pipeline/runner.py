"""The driver: run the stages in order, skipping finished ones, and keep ``DIR/summary.json``
up to date (:func:`transcam_nb.pipeline.report.build_summary`)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from ..artifacts import write_json
from ..config import PipelineConfig, Profile, get_profile
from . import affinity, cams, classifier, crf, randomwalk, segment
from .context import STAGES, PipelineContext, PipelineInputError, StageIncomplete, default_out_dir, pipeline_config
from .report import build_summary

log = logging.getLogger("transcam_nb.pipeline")

__all__ = ["STAGE_FUNCTIONS", "run_stage", "run_pipeline"]

#: every stage's ``run(ctx)``, in pipeline order
STAGE_FUNCTIONS: dict[str, Callable[[PipelineContext], dict]] = {
    "classifier": classifier.run,
    "cams": cams.run,
    "crf": crf.run,
    "affinity": affinity.run,
    "randomwalk": randomwalk.run,
    "segment": segment.run,
}


def run_stage(ctx: PipelineContext, stage: str) -> tuple[str, dict]:
    """Run one stage; a stage already complete with the same settings is skipped (one made with
    other settings raises ``ValueError``). Returns ``(status, DONE record)``, status ``"ran"`` or
    ``"skipped"``."""
    if stage not in STAGE_FUNCTIONS:
        raise PipelineInputError(f"unknown pipeline stage {stage!r}; stages: {', '.join(STAGES)}")
    from ..device import seed_everything

    before = ctx.done(stage)
    # every stage starts from the same RNG state, whatever ran before it in this process (a
    # resumed run skips stages), so e.g. AffinityNet's initial weights do not depend on it
    seed_everything(int(ctx.profile.seed))
    fresh = not (ctx.stage_dir(stage) / "config.json").exists()
    try:
        rec = STAGE_FUNCTIONS[stage](ctx)
    except StageIncomplete:
        raise
    except BaseException:
        if fresh:  # failed before writing anything (e.g. while checking its inputs): leave no config.json
            ctx.discard_if_empty(stage)
        raise
    if before is not None and before.get("key") == rec.get("key") and before.get("finished") == rec.get("finished"):
        log.info("[pipeline] %s: done already, skipped", stage)
        return "skipped", rec
    log.info("[pipeline] %s: finished in %.1f s", stage, rec.get("wall_s", 0))
    return "ran", rec




def run_pipeline(profile: Profile | str | None = None, out_dir: str | os.PathLike | None = None,
                 stages: Sequence[str] | None = None, *, config: PipelineConfig | None = None,
                 shard: tuple[int, int] = (0, 1), wait: bool = False, progress: bool = True,
                 **config_overrides) -> dict:
    """Run the stages in order (all by default), skipping finished ones; returns the summary.

    ``profile``: a :class:`~transcam_nb.config.Profile` or name. ``out_dir``: the run folder
    (default :func:`default_out_dir`). ``config`` / ``config_overrides``: the
    :class:`PipelineConfig` (default :func:`pipeline_config` of the profile). ``stages``: a subset
    (its earlier stages must be complete). ``shard``, ``wait``: see the module docstring; a
    shard that must wait with ``wait=False`` stops, and the summary says which stage is
    incomplete. ``DIR/summary.json`` is rewritten after every stage.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = config or pipeline_config(prof)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    out = Path(out_dir) if out_dir is not None else default_out_dir(prof, cfg)
    out.mkdir(parents=True, exist_ok=True)
    i, n = int(shard[0]), int(shard[1])
    if not (n >= 1 and 0 <= i < n):
        raise PipelineInputError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    from ..device import seed_everything, set_threads

    set_threads(prof.threads)
    seed_everything(prof.seed)
    ctx = PipelineContext(prof, cfg, out, shard=(i, n), wait=wait, progress=progress)
    wanted = list(STAGES) if stages is None else list(stages)
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise PipelineInputError(f"unknown pipeline stage(s) {bad}; stages: {', '.join(STAGES)}")
    from ..postprocess.crf import POSTPROCESS_METHODS

    if cfg.postprocess not in POSTPROCESS_METHODS:
        raise PipelineInputError(f"pipeline setting postprocess must be one of {POSTPROCESS_METHODS}, got {cfg.postprocess!r}")
    statuses: dict = {}
    t0 = time.time()
    for st in STAGES:
        if st not in wanted:
            continue
        try:
            statuses[st], _ = run_stage(ctx, st)
        except StageIncomplete as e:
            statuses[st] = "waiting for other shards"
            log.info("[pipeline] %s: %s", st, e)
            break
        if i == 0:
            write_json(out / "summary.json", build_summary(ctx, statuses))
    summary = build_summary(ctx, statuses)
    summary["details"]["wall_s"]["this_call"] = round(time.time() - t0, 3)
    if i == 0:
        write_json(out / "summary.json", summary)
    return summary



