"""Stage 1, the classifier, and the classifier cache the book shares with the pipeline.

:func:`cached_classifier` trains the profile's classifier once (or loads it when a finished run
with the same configuration exists under the artifacts folder) and returns ``(model, run_dir)``;
:func:`transcam_nb.workflow.classifier` is a thin call into it. :func:`run` is the pipeline
stage: it records which weights the later stages use in ``DIR/classifier/DONE.json``.

A cache miss whose configuration equals that of a finished classifier shipped with the package
(:mod:`transcam_nb.pipeline.shipped`: the book's contrast arm) installs that one instead of
training; ``shipped=False`` or ``TRANSCAM_NO_SHIPPED=1`` trains it for real.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..artifacts import artifacts_dir, config_hash, read_json, write_json
from ..config import Profile
from ..engine.config import classifier_weights
from .context import PipelineContext, PipelineInputError, file_id, trimmed_profile

log = logging.getLogger("transcam_nb.pipeline")

__all__ = ["run", "load_classifier", "cached_classifier", "classifier_weights", "classifier_spec"]


def _data_spec(profile: Profile) -> dict:
    if profile.data_root is None and profile.name == "tiny":
        from ..data import synthetic

        return {"synthetic": synthetic.spec(seed=0), "generator": synthetic.GENERATOR_VERSION}
    return {"data_root": str(profile.data_root)}


def _init_spec(init) -> dict:
    if init is None:
        return {"init": None}
    from ..weights import resolve_checkpoint

    p = resolve_checkpoint(init)
    st = p.stat()
    return {"init": p.name, "init_size": st.st_size}


def classifier_spec(profile: Profile, *, init: str | None = "profile", **overrides) -> tuple[Profile, dict, str]:
    """What decides the classifier :func:`cached_classifier` returns: ``(profile_run, spec, run_name)``.

    ``spec`` holds the profile (run-only fields dropped), the data (the synthetic benchmark's
    spec, or the data root), the initial weights' file name and size, and the package version;
    ``run_name`` is its folder under the artifacts folder, ``classifier-<profile>-<init|scratch>-<hash>``.
    """
    from .. import __version__

    prof = profile.replace(**overrides) if overrides else profile
    init_arg = prof.init_checkpoint if init == "profile" else init
    prof_run = prof.replace(init_checkpoint=init_arg)
    spec = {"profile": trimmed_profile(prof_run), "data": _data_spec(prof_run), **_init_spec(init_arg),
            "version": __version__}
    tag = "scratch" if init_arg is None else "init"
    return prof_run, spec, f"classifier-{prof.name}-{tag}-{config_hash(spec, 10)}"


def cached_classifier(profile: Profile, *, init: str | None = "profile", progress: bool = True,
                      from_scratch: bool = False, shipped: bool | None = None, **overrides):
    """The trained classifier of ``profile``: ``(model, run_dir)``.

    ``init="profile"`` starts from the profile's ``init_checkpoint`` (the tiny profile's shipped
    pretrained weights, or the official ImageNet file for the paper profile); ``init=None``
    trains from scratch; a path starts from that file (a profile that needs initial weights,
    the paper's, refuses to start without one unless ``from_scratch``). A finished run with the same
    configuration (under :func:`transcam_nb.artifacts.artifacts_dir`) is loaded instead of
    retrained; an unfinished one is resumed. Where none is finished and the package ships a
    classifier of exactly this configuration (:mod:`transcam_nb.pipeline.shipped`), that one is
    installed into the run folder instead of training, unless ``shipped=False`` (default: not when
    ``$TRANSCAM_NO_SHIPPED`` is set to 1; then an installed copy in the run folder is trained over).
    """
    from ..device import get_device
    from ..models import load_checkpoint
    from ..models.factory import build_model_for_profile
    from ..train import train_classifier
    from . import shipped as _shipped

    prof_run, spec, run_name = classifier_spec(profile, init=init, **overrides)
    init_arg = prof_run.init_checkpoint
    run_dir = artifacts_dir() / run_name
    done = run_dir / "DONE.json"
    found, use = None, _shipped.use_shipped(shipped)
    if not use and done.is_file() and (read_json(done) or {}).get("shipped"):
        log.info("[shipped] classifier %s holds the shipped copy; training it instead", run_dir.name)
        done.unlink()  # the installed copy is not a training run: train over it
    if not done.is_file() and use:
        found = _shipped.find_shipped(spec, init_arg)
    if found is not None:
        _shipped.install(found, run_dir, spec)
    elif not done.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "spec.json", spec, sort_keys=False)
        t0 = time.time()
        summary = train_classifier(prof_run, run_dir, resume=True, init=init_arg, progress=progress,
                                   from_scratch=from_scratch or init is None)  # init=None: on purpose
        summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}
        summary["wall_s_this_call"] = time.time() - t0
        write_json(done, summary, sort_keys=False)
    else:
        log.info("[cached] classifier %s", run_dir.name)
    model = build_model_for_profile(prof_run, init=None)
    load_checkpoint(model, classifier_weights(run_dir))
    model.eval()
    return model.to(get_device(prof_run.device)), run_dir


def run(ctx: PipelineContext) -> dict:
    """Stage 1: the trained classifier (Eq. 6). Records which weights the later
    stages use in ``DIR/classifier/DONE.json`` (the weights themselves stay where they are)."""
    cfg, prof = ctx.config, ctx.profile
    mode = cfg.classifier
    inference = ("scales", "flip", "square", "bg_threshold", "crf_thresholds")  # not the classifier's business
    spec = {"mode": mode if mode in ("workflow", "train") else "file",
            "profile": {k: v for k, v in trimmed_profile(prof).items() if k not in inference},
            "steps": cfg.classifier_steps}
    if mode not in ("workflow", "train"):
        path = Path(mode).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"classifier weights {path} do not exist (expected a weights file: "
                                    "--checkpoint FILE, or --classifier workflow|train|FILE)")
        spec["checkpoint"] = file_id(path)
        if ctx.done("classifier") is None:
            _check_weights(ctx, path)  # a file that does not fit fails here, before anything is recorded
    key = ctx.begin("classifier", spec)
    if ctx.finished("classifier", key):
        return ctx.finished("classifier", key)
    if ctx.shard[0] != 0:  # training is shard 0's job
        ctx.wait_until(lambda: ctx.done("classifier") is not None, "the classifier (shard 0)")
        return ctx.require("classifier")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and mode in ("workflow", "train"):
        raise PipelineInputError(
            "the pipeline does not train the classifier under torchrun (its training would wait for the other "
            "processes): train it first (torchrun ... -m transcam_nb train --out RUN, or this pipeline without "
            "torchrun), then pass --classifier RUN/classifier.pt")
    t0 = time.time()
    if mode == "workflow":
        over = {"max_steps": cfg.classifier_steps} if cfg.classifier_steps else {}
        _, run_dir = cached_classifier(prof, progress=ctx.progress, from_scratch=cfg.from_scratch, **over)
        weights = classifier_weights(Path(run_dir))
    elif mode == "train":
        from ..train import train_classifier

        run_dir = ctx.stage_dir("classifier") / "run"
        train_classifier(prof, run_dir, resume=True, max_steps=cfg.classifier_steps, progress=ctx.progress,
                         from_scratch=cfg.from_scratch)
        weights = classifier_weights(run_dir)
    else:
        weights = Path(mode).expanduser()
    return ctx.finish("classifier", key, {"checkpoint": str(Path(weights).resolve()), "mode": spec["mode"]},
                      time.time() - t0)


def _check_weights(ctx: PipelineContext, path: Path) -> None:
    """Raise :class:`~transcam_nb.models.CheckpointError` unless ``path`` loads into the profile's network."""
    from ..models import load_checkpoint
    from ..models.factory import build_model_for_profile

    model = build_model_for_profile(ctx.profile.replace(drop_path_rate=0.0), init=None, num_fg=ctx.num_fg,
                                    verbose=False)
    load_checkpoint(model, path, drop_mismatched_heads=False)


def load_classifier(ctx: PipelineContext):
    """The stage-1 network in eval mode on the pipeline's device."""
    from ..models import load_checkpoint
    from ..models.factory import build_model_for_profile

    done = ctx.require("classifier")
    model = build_model_for_profile(ctx.profile.replace(drop_path_rate=0.0), init=None, num_fg=ctx.num_fg,
                                    verbose=False)
    load_checkpoint(model, done["result"]["checkpoint"], drop_mismatched_heads=False)
    return model.to(ctx.device).eval()


