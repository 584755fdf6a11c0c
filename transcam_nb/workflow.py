"""The book's workflow: cached, resumable calls that chapters share (the book layer: nothing below imports it).

A chapter starts with :func:`setup` (profile, device, seed, versions) and then asks for what it
needs: :func:`classifier` trains the profile's classifier (or loads it when a finished run
with the same configuration exists), :func:`evaluate_variants` computes multi-scale CAMs of
several refinement variants in one pass per image and sweeps the background threshold. Results
are cached under :func:`artifacts_dir` keyed by a hash of everything that determines them, so
later chapters reuse earlier ones, yet each notebook also runs alone (it computes what it
misses).

Environment variables:

``TRANSCAM_PROFILE``     ``tiny`` (default) or ``paper``
``TRANSCAM_ARTIFACTS``   where cached stage outputs go (default: ``<repo>/artifacts`` inside a
                         checkout, else ``~/.cache/transcam_nb/artifacts``)
``TRANSCAM_VOC_ROOT``    the paper profile's VOC 2012 folder (holding ``JPEGImages/``)
``TRANSCAM_SBD_ROOT``    SBD, for the ``train_aug`` list
``TRANSCAM_INIT``        the ImageNet Conformer checkpoint the paper profile starts from
``TRANSCAM_SMOKE``       ``1``: a paper-profile *smoke run* (toy sizes, a few steps, random weights
                         allowed: :data:`transcam_nb.smoke.SMOKE_OVERRIDES`); its numbers mean nothing
``TRANSCAM_NO_SHIPPED``  ``1``: train every classifier, even one the package ships finished for the
                         same configuration (the contrast arm of chapters 2 and 5:
                         :mod:`transcam_nb.pipeline.shipped`)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from . import __version__
from .artifacts import artifacts_dir
from .cam import multiscale_variants  # noqa: F401 (re-exported; lives in cam.py)
from .config import Profile, get_profile, paths_from_environment
from .smoke import smoke_overrides
from .device import describe, get_device, seed_everything, set_threads
from .pipeline.variants import AGGREGATION
from .refine import VARIANTS

__all__ = ["setup", "artifacts_dir", "data_root", "classifier", "DEFAULT_VARIANTS", "multiscale_variants",
           "evaluate_variants", "eval_dataset"]

#: the refinement variants of the paper's Tables 2-3 plus rollout: name -> (method, blocks)
DEFAULT_VARIANTS = VARIANTS  # the one table lives in refine.py


#: Whether the book's long calls (training, CAM sweeps) draw progress bars when not told; set by
#: :func:`setup` (off: the bars' thousands of updates would land in the rendered chapters).
PROGRESS = {"default": False}
#: Whether :func:`classifier` may train a profile that needs initial weights (the paper profile)
#: from random ones when none are given; set by :func:`setup` (``from_scratch=``, or a smoke run).
FROM_SCRATCH = {"default": False}


def _progress(flag: bool | None) -> bool:
    return PROGRESS["default"] if flag is None else bool(flag)


def setup(profile: str | Profile | None = None, *, verbose: bool = True, log_level: int = logging.WARNING,
          progress: bool = False, from_scratch: bool | None = None, **overrides) -> Profile:
    """The Setup cell: choose the profile (argument, else ``$TRANSCAM_PROFILE``, else tiny),
    apply the paper profile's path variables, set threads and seeds, print what was chosen.

    The package's progress and cache messages (``[cached] ...``, ``[compute] ...`` on the
    ``transcam_nb`` logger) are kept out of the chapters' outputs: the logger is set to
    ``log_level`` (WARNING; pass ``logging.INFO`` to see them while working in a notebook), and
    progress bars are off unless ``progress=True``.

    ``from_scratch=True`` lets :func:`classifier` train the paper profile's classifier from random
    weights when no ``init_checkpoint`` is given (it refuses otherwise). ``$TRANSCAM_SMOKE``
    (:func:`transcam_nb.smoke.smoke_overrides`) shrinks the paper profile to a smoke run and
    sets ``from_scratch``; the tiny profile ignores it."""
    logging.getLogger("transcam_nb").setLevel(log_level)
    PROGRESS["default"] = bool(progress)
    if not isinstance(profile, Profile):
        profile = get_profile(profile)
    smoke = smoke_overrides(profile.name, "pipeline")
    FROM_SCRATCH["default"] = bool(smoke.get("from_scratch", False) if from_scratch is None else from_scratch)
    env = {k: v for k, v in paths_from_environment(profile.name).items() if k not in overrides}
    env.update({k: v for k, v in smoke_overrides(profile.name, "classifier").items() if k not in overrides})
    profile = profile.replace(**env, **overrides) if (env or overrides) else profile
    set_threads(profile.threads)
    seed_everything(profile.seed)
    if verbose:
        info = describe(get_device(profile.device))
        print(f"profile : {profile.summary()}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()) + f", transcam_nb {__version__}")
        if smoke:
            print("note    : smoke run ($TRANSCAM_SMOKE) — the paper's code paths at a toy size from random "
                  "weights; its numbers mean nothing")
        if profile.name == "tiny":
            print("note    : tiny profile — a synthetic benchmark and a narrow Conformer on a CPU; "
                  "these are NOT the paper's numbers")
    return profile


def data_root(profile: Profile) -> Path:
    """The dataset folder of ``profile`` (the embedded benchmark is generated on first use)."""
    from .data.roots import resolve_data_root

    return Path(resolve_data_root(profile, progress=False))


def classifier(profile: Profile, *, init: str | None = "profile", progress: bool | None = None,
               from_scratch: bool | None = None, shipped: bool | None = None, **overrides):
    """The trained classifier of ``profile``: ``(model, run_dir)``, from the classifier cache
    (:func:`transcam_nb.pipeline.classifier.cached_classifier`, shared with the pipeline).

    ``init="profile"`` starts from the profile's ``init_checkpoint`` (the tiny profile's shipped
    pretrained weights, or the official ImageNet file for the paper profile); ``init=None``
    trains from scratch; a path starts from that file. A finished run with the same
    configuration is loaded instead of retrained; an unfinished one is resumed. The paper profile
    without an ``init_checkpoint`` refuses to start unless ``from_scratch`` (default: what
    :func:`setup` chose). A classifier the package ships finished for exactly this configuration
    (the tiny profile's contrast arm, ``init="package:tiny_pretrained_grouped.pt"``:
    :mod:`transcam_nb.pipeline.shipped`) is installed instead of trained, unless ``shipped=False``
    or ``$TRANSCAM_NO_SHIPPED`` is 1.
    """
    from .pipeline.classifier import cached_classifier

    scratch = FROM_SCRATCH["default"] if from_scratch is None else bool(from_scratch)
    return cached_classifier(profile, init=init, progress=_progress(progress), from_scratch=scratch,
                             shipped=shipped, **overrides)


def eval_dataset(profile: Profile, split: str | None = None):
    """The evaluation split of ``profile`` in ``"infer"`` mode (image, labels, mask, id): its
    VOC-layout or COCO dataset (:func:`transcam_nb.data.roots.build_dataset`)."""
    from .data.roots import build_dataset

    return build_dataset(profile, split or profile.eval_split, "infer", data_root=data_root(profile), progress=False)


def evaluate_variants(model, profile: Profile, *, variants: dict | None = None, split: str | None = None,
                      limit: int | None = None, taus: Sequence[float] | None = None, fixed_tau: float | None = None,
                      cache_key: dict | str | None = None, progress: bool | None = None) -> dict:
    """Pseudo-label quality of each refinement variant on a split: the τ sweep, the best τ (chosen
    on ground truth, so optimistic) and the mIoU at a τ fixed in advance.

    Returns ``{"variants": {name: {"taus", "mious", "best_tau", "best_miou", "fixed_tau",
    "fixed_miou", "iou_fixed"}}, "num_images", "class_names"}``; cached as JSON when
    ``cache_key`` (e.g. the classifier's run folder name) is given. The computation is
    :func:`transcam_nb.pipeline.variants.evaluate_variants` (shared with ``python -m transcam_nb
    variant-seeds``); this adds the book's progress default.
    """
    from .pipeline.variants import evaluate_variants as _evaluate

    return _evaluate(model, profile, variants=variants or DEFAULT_VARIANTS, split=split, limit=limit, taus=taus,
                     fixed_tau=fixed_tau, cache_key=cache_key, progress=_progress(progress))


def learned_aggregation(model, profile: Profile, *, cache_key: dict | str, num_images: int = AGGREGATION["num_images"],
                        steps: int = AGGREGATION["steps"], lr: float = AGGREGATION["lr"],
                        split: str | None = None) -> dict:
    """The block and head weights of :func:`transcam_nb.aggregation.fit_aggregation`, fitted on
    the first ``num_images`` images of the training split (``profile.train_split``; image labels
    only) at the profile's largest CAM scale, cached as JSON under ``cache_key`` (e.g. the
    classifier's run folder name). Returns ``{"weights": [[...]] (blocks × heads), "map_start",
    "map_end", "loss", "num_images", "split"}``. The computation is
    :func:`transcam_nb.pipeline.variants.learned_aggregation` (shared with ``python -m
    transcam_nb variant-seeds``)."""
    from .pipeline.variants import learned_aggregation as _fit

    return _fit(model, profile, cache_key=cache_key, num_images=num_images, steps=steps, lr=lr, split=split,
                progress=_progress(None))


def variants_table(result: dict):
    """The sweep result as a pandas DataFrame (percent, for display), one row per variant."""
    import pandas as pd

    rows = []
    for name, v in result["variants"].items():
        rows.append({"variant": name, "best τ (GT-picked)": v["best_tau"], "mIoU at best τ (%)": 100 * v["best_miou"],
                     "fixed τ": v["fixed_tau"], "mIoU at fixed τ (%)": 100 * v["fixed_miou"]})
    return pd.DataFrame(rows).set_index("variant").round(2)
