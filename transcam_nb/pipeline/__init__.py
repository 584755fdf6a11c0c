"""The whole weakly-supervised pipeline as resumable on-disk stages (paper §4.4).

Data flow (docs/reference.md §3, §7, §8), one folder per stage under the run folder ``DIR``::

    classifier  the trained TransCAM classifier (the classifier cache of
                :func:`transcam_nb.pipeline.classifier.cached_classifier`, shared with the book;
                trained into DIR/classifier; or a checkpoint file you give)
    cams        multi-scale CAMs of the pseudo-label images: DIR/cams/cam/<id>.npz (plain CAM,
                Eq. 1) and DIR/cams/transcam/<id>.npz (TransCAM, Eq. 5); both evaluated against
                the ground truth at the τ fixed in advance and over the authors' τ sweep
    crf         the PSA labels: DIR/crf/la/<id>.png (τ = 0.60, confident foreground) and
                DIR/crf/ha/<id>.png (τ = 0.25, confident background), argmax + dense CRF
                (crf.make_la_ha_labels, docs/reference.md §3)
    affinity    AffinityNet trained on the la/ha pairs (docs/reference.md §7.1): DIR/affinity/
                affinity_last.pt (resumable), affinity_net.pt
    randomwalk  the TransCAM CAMs diffused over the learnt affinities (docs/reference.md §7.2):
                DIR/randomwalk/rw/<id>.png and, with the CRF of step 9, rw_crf/<id>.png
    segment     DeepLab trained on the random-walk labels (docs/reference.md §8): DIR/segment/last.pt,
                model.pt, log.jsonl, and its multi-scale predictions on the validation split
                DIR/segment/val_pred/<id>.png with metrics.json

Every stage writes ``DIR/<stage>/config.json`` (what determines it, including the key of the
stage it reads) when it starts and ``DIR/<stage>/DONE.json`` (its results and wall time) when
it is complete, both atomically. A finished stage is skipped; a started one resumes: per-image
stages skip the images whose outputs exist (every file is written atomically, so a killed run
leaves no half file), training stages continue from their last checkpoint. A folder made with
other settings is refused with a clear error rather than mixed.

Per-image stages (cams, crf, randomwalk) can be sharded: ``shard=(i, n)`` processes every
n-th image from i (``--shard i/n`` or torchrun's ``RANK``/``WORLD_SIZE`` on the command line).
A shard that finishes its part before the others either stops (``wait=False``; run the command
again later) or polls until the other shards have written theirs (``wait=True``, the default
under torchrun). Training stages run in shard 0 only, the others wait for its ``DONE.json``.

:func:`run_pipeline` runs the stages in order and writes ``DIR/summary.json`` (see
:mod:`.report`: the mIoU in percent after each stage, with details).

Layout of this package: one module per stage (``classifier``, ``cams``, ``crf``, ``affinity``,
``randomwalk``, ``segment``), each with the same ``run(ctx) -> DONE record``; ``context``
(:class:`PipelineContext`, the stage list, bookkeeping), ``runner`` (:func:`run_pipeline`) and
``report`` (summary, results table, readers for the book); ``seeds`` (the pipeline over several
seeds, the committed table and the book's check of its row) and ``variants`` (the refinement
variants of chapters 5 and 8 on the evaluation split, the same over several seeds and their
committed table). Nothing here imports the book layer
(``workflow``, ``viz``, ``widgets``, ``diagnostics``).

The command line is ``python -m transcam_nb pipeline --profile tiny --out DIR`` (and the thin
per-stage commands ``crf``, ``affinity``, ``randomwalk``, ``segment``), defined in
:mod:`transcam_nb.cli`.
"""
from __future__ import annotations

from ..config import PipelineConfig
from .affinity import affinity_config, build_affinity_net
from .classifier import cached_classifier, load_classifier
from .context import STAGES, SUMMARY_KEYS, PipelineContext, StageIncomplete, default_out_dir, pipeline_config
from .report import (TABLE_ROWS, build_summary, find_run, load_example, read_affinity_history, read_deeplab_log,
                     read_summary, results_table)
from .runner import STAGE_FUNCTIONS, run_pipeline, run_stage
from .seeds import (SEED_COLUMNS, check_seed_row, check_summary, committed_table, read_seed_table, run_seeds, seed_frame,
                    seed_row)
from .segment import seg_config
from .variants import (check_variant_row, committed_variants, read_variant_table, refinement_gain, run_variant_seeds,
                       variant_frame, variant_key)

__all__ = [
    "STAGES", "SUMMARY_KEYS", "PipelineConfig", "pipeline_config", "StageIncomplete", "PipelineContext",
    "cached_classifier", "load_classifier", "affinity_config", "build_affinity_net", "seg_config",
    "STAGE_FUNCTIONS", "run_stage", "run_pipeline", "default_out_dir", "build_summary", "find_run", "read_summary",
    "TABLE_ROWS", "results_table", "load_example", "read_deeplab_log", "read_affinity_history",
    "SEED_COLUMNS", "run_seeds", "committed_table", "read_seed_table", "seed_frame", "seed_row", "check_seed_row",
    "check_summary", "run_variant_seeds", "committed_variants", "read_variant_table", "variant_frame", "variant_key",
    "refinement_gain", "check_variant_row",
]
