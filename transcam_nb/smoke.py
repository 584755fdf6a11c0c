"""The paper profile's *smoke run*: ``TRANSCAM_SMOKE=1``.

A smoke run goes through the paper profile's code paths and networks (Conformer-S, VOC lists and
labels, AffinityNet on ResNet-50, DeepLab on ResNet-101 with frozen BatchNorm, the CRF and
test-time flip) at a toy input size for a few steps, from random weights (``from_scratch=True``,
the explicit flag that lets the paper profile start without ImageNet weights). It shows that
every chapter runs, nothing more: its numbers mean nothing.

:func:`smoke_overrides` is the one reader of the variable. The book's Setup cell
(:func:`transcam_nb.workflow.setup`) applies its ``"classifier"`` part to the profile and takes
``from_scratch`` from its ``"pipeline"`` part; :func:`transcam_nb.pipeline.pipeline_config`
applies the ``"pipeline"`` part. The tiny profile ignores the variable, so the book's numbers
never change. ``tests/test_paper_smoke.py`` runs every chapter this way on a 4-image VOC devkit.
"""
from __future__ import annotations

import os

__all__ = ["SMOKE_VARIABLE", "SMOKE_OVERRIDES", "smoke_overrides"]

#: the environment variable that asks for a smoke run
SMOKE_VARIABLE = "TRANSCAM_SMOKE"
#: what a smoke run changes, stage by stage (fields of Profile and of PipelineConfig)
SMOKE_OVERRIDES = {
    # Profile fields: 64 px crops, two CAM scales, two steps of two images
    "classifier": dict(crop_size=64, resize_long=(64, 96), scales=(64, 96), batch_size=2, max_steps=2, epochs=1,
                       num_workers=0),
    # PipelineConfig fields: AffinityNet one epoch of 96 px crops, DeepLab two iterations of 64 px
    # crops scored at one scale (flip and CRF kept: the paper's test-time path)
    "pipeline": dict(from_scratch=True,
                     affinity_overrides=dict(crop_size=96, batch_size=2, epochs=1, num_workers=0, save_every=1),
                     seg_overrides=dict(iters=2, batch=2, crop=64, test_scales=(1.0,), workers=0, ckpt_every=1,
                                        log_every=1)),
}


def smoke_overrides(profile: str, stage: str, env=None) -> dict:
    """The :data:`SMOKE_OVERRIDES` of ``stage`` (``"classifier"`` or ``"pipeline"``) when
    ``$TRANSCAM_SMOKE`` is set (not ``""``/``"0"``) and ``profile`` is ``"paper"``; else ``{}``."""
    env = os.environ if env is None else env
    if profile != "paper" or env.get(SMOKE_VARIABLE, "") in ("", "0"):
        return {}
    return dict(SMOKE_OVERRIDES[stage])
