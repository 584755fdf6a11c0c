"""The ``train``, ``pretrain``, ``pipeline`` (+ ``crf``, ``affinity``, ``randomwalk``, ``segment``)
and ``diagnostics`` commands."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shlex
import sys

from .common import (
    UsageError,
    _DeprecatedAlias,
    add_checkpoint,
    add_data_root,
    add_from_scratch,
    add_init,
    add_out,
    add_profile,
    add_runtime,
    add_sbd_root,
    add_set,
    add_shard,
    one_line,
    parse_shard,
    profile_from_args,
    register_stage,
)

log = logging.getLogger("transcam_nb.cli")

__all__ = ["run_train", "run_pretrain", "run_pipeline_command", "run_diagnostics"]


# ----------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    add_out(p, "run folder: last.pt, classifier.pt, metrics.jsonl, summary.json")
    add_data_root(p)
    add_sbd_root(p)
    p.add_argument("--cls-labels", default=None, help="image-label file: the authors' cls_labels.npy or JSON")
    p.add_argument("--allow-pickle", action="store_true", help="needed to read the authors' pickled cls_labels.npy")
    add_init(p)
    add_from_scratch(p, "the paper profile's classifier")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/last.pt when it exists (default: yes)")
    add_set(p)
    p.add_argument("--max-steps", type=int, default=None, help="step budget (overrides epochs; the lr schedule follows)")
    p.add_argument("--precision", "--amp", default=None, choices=["auto", "fp32", "bf16", "fp16", "off"],
                   action=_DeprecatedAlias, deprecated=("--amp",), help="training precision (default: the profile's; auto = bf16 or fp16+scaler on CUDA, fp32 on "
                        "CPU; fp32 = the authors' numerics)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics-log record")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="checkpoint every N minutes (and every epoch)")
    p.add_argument("--checkpoint-every-steps", type=int, default=None, help="also checkpoint every N steps")
    add_runtime(p)


@register_stage("train", "train the TransCAM classifier (Eq. 6): resumable, AMP, DDP under torchrun", _train_args)
def run_train(args: argparse.Namespace) -> int:
    from ..engine import NonFiniteLossError
    from ..train import train_classifier

    prof = profile_from_args(args, data_root=False, precision={"off": "fp32"}.get(args.precision, args.precision),
                             compile=True if args.compile else None,
                             channels_last=True if args.channels_last else None)
    rank = int(os.environ.get("RANK", "0"))
    try:
        summary = train_classifier(
            prof, args.out, resume=args.resume, init=args.init, max_steps=args.max_steps, data_root=args.data_root,
            sbd_root=args.sbd_root, cls_labels=args.cls_labels, allow_pickle=args.allow_pickle,
            log_every=args.log_every, checkpoint_minutes=args.checkpoint_minutes,
            checkpoint_every_steps=args.checkpoint_every_steps, progress=not args.no_progress,
            from_scratch=args.from_scratch)
    except NonFiniteLossError as e:
        log.error("[train] stopped: %s", e)
        return 3
    except ValueError as e:  # settings that do not fit the data or the run folder: say what, no traceback
        raise UsageError(str(e)) from None
    if rank == 0:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


# ----------------------------------------------------------------------------- pretrain
def _pretrain_args(p: argparse.ArgumentParser) -> None:
    add_profile(p, "whose model to pretrain (default tiny)", default="tiny")
    add_out(p)
    add_set(p, "a field of the profile's pretrain settings (transcam_nb.config.PretrainConfig)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped config's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--dense-weight", type=float, default=None,
                   help="weight of the per-token texture loss (0 = multi-label only)")
    p.add_argument("--group-weight", type=float, default=None,
                   help="weight of the attention-grouping loss on blocks 5-12 (0 = off)")
    p.add_argument("--group-loss", choices=("mass", "ce"), default=None,
                   help="grouping loss: -log same-class attention mass, or CE to the same-class indicator")
    p.add_argument("--init", default=None, help="continue from these weights (e.g. package:tiny_pretrained.pt)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-scenes", type=int, default=None, help="held-out scenes for the final metrics (default 256)")
    p.add_argument("--max-minutes", type=float, default=None, help="safety cap on wall time (recorded)")
    p.add_argument("--ship", action="store_true",
                   help="afterwards copy weights + manifest into transcam_nb/weights/<profile>_pretrained.{pt,json}")
    p.add_argument("--ship-name", default=None,
                   help="file stem for --ship (default <profile>_pretrained; e.g. tiny_pretrained_grouped)")
    add_runtime(p, device_default="auto")


@register_stage("pretrain", "pretrain the profile's Conformer on formula-driven texture scenes "
                "(transcam_nb/pretrain.py)", _pretrain_args)
def run_pretrain(args: argparse.Namespace) -> int:
    from ..config import parse_overrides
    from ..pretrain import default_config, pretrain, ship

    try:
        base = default_config(args.profile)
    except ValueError as e:
        raise UsageError(f"--profile: {e}") from None
    over = parse_overrides(args.set, base)
    for name in ("steps", "batch_size", "lr", "dense_weight", "image_size", "seed", "max_minutes", "threads",
                 "group_weight", "group_loss", "init", "eval_scenes"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    over["device"] = args.device
    cfg = base.replace(**over)
    command = "python -m transcam_nb " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and "pretrain" in sys.argv[1:2] else None
    pretrain(cfg, args.out, command=command, progress=not args.no_progress)
    if args.ship:
        pt, js = ship(args.out, args.profile, name=args.ship_name)
        log.info("[pretrain] shipped %s and %s", pt.name, js.name)
    return 0


# ----------------------------------------------------------------------------- pipeline
def _pipeline_args(p: argparse.ArgumentParser, stage: str | None = None) -> None:
    from ..pipeline.context import STAGES as PIPELINE_STAGES

    add_profile(p)
    add_out(p, "run folder: one sub-folder per stage, summary.json")
    if stage is None:
        p.add_argument("--stages", default=None,
                       help=f"comma-separated subset of {','.join(PIPELINE_STAGES)} (default: all, in order)")
    add_data_root(p)
    add_sbd_root(p)
    add_set(p, "a profile field (e.g. --set bg_threshold=0.3)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline setting (transcam_nb.config.PipelineConfig), repeatable (e.g. --config "
                        "'seg_overrides={\"iters\": 100}')")
    add_checkpoint(p, help="trained classifier weights to use (skips the classifier's training; the same as "
                           "--classifier FILE)")
    p.add_argument("--classifier", default=None,
                   help="'workflow' (the classifier cache shared with the book, default), 'train' (train into "
                        "OUT/classifier) or a weights file")
    add_init(p)
    add_from_scratch(p, "the paper profile's classifier, AffinityNet and DeepLab")
    p.add_argument("--classifier-steps", type=int, default=None, help="step budget of the classifier training")
    p.add_argument("--pseudo-limit", type=int, default=None, help="only the first N pseudo-label images")
    p.add_argument("--val-limit", type=int, default=None, help="only the first N validation images")
    add_shard(p)
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="a shard that finishes first polls for the others (default: yes under torchrun)")
    add_runtime(p)
    p.set_defaults(pipeline_stage=stage)


def _pipeline_settings(args: argparse.Namespace, prof, extra: dict, flags):
    """The pipeline settings of a command: the profile's, then ``--config``, then ``extra``, then
    the named flags that were given; a setting that does not exist is one line."""
    from ..config import PipelineConfig, parse_overrides
    from ..pipeline import pipeline_config

    cover = parse_overrides(args.config, PipelineConfig(), "--config") | extra
    cover.update({name: getattr(args, name) for name in flags if getattr(args, name) is not None})
    try:
        return pipeline_config(prof, **cover)
    except TypeError as e:
        raise UsageError(str(e)) from None


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Run ``pipeline`` (or one stage) from parsed arguments; prints the summary's numbers."""
    from ..pipeline import (
        SUMMARY_KEYS,
        StageIncomplete,
        run_pipeline,
    )

    prof = profile_from_args(args, init_checkpoint=args.init, sbd_root=args.sbd_root)
    if prof.dataset == "coco":  # a wrong COCO root is refused before any work starts
        from ..data.roots import resolve_data_root

        resolve_data_root(prof, progress=False)
    extra = {}
    if args.checkpoint is not None and args.classifier not in (None, args.checkpoint):
        raise UsageError("give --checkpoint FILE or --classifier, not both")
    if args.checkpoint is not None:
        from ..models import CheckpointError
        from ..models.checkpoints import read_checkpoint
        try:  # checked before any work (the benchmark's generation, a cold data cache) starts
            read_checkpoint(args.checkpoint, what="--checkpoint")
        except (CheckpointError, OSError) as e:
            raise UsageError(one_line(e)) from None
        extra["classifier"] = args.checkpoint
    if args.from_scratch:
        extra["from_scratch"] = True
    cfg = _pipeline_settings(args, prof, extra, ("classifier", "classifier_steps", "pseudo_limit", "val_limit"))
    stage = getattr(args, "pipeline_stage", None)
    stages = [stage] if stage else ([s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None)
    shard = parse_shard(args.shard)
    wait = args.wait if args.wait is not None else ("WORLD_SIZE" in os.environ and args.shard is None)
    try:
        summary = run_pipeline(prof, args.out, stages, config=cfg, shard=shard, wait=wait,
                               progress=not args.no_progress)
    except StageIncomplete:
        raise
    except ValueError as e:  # settings that do not fit (missing files and InputError: cli.main's handler)
        raise UsageError(str(e)) from None
    nums = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
    print(json.dumps({"out": str(args.out), "miou_percent": nums, "status": summary["details"]["status"]}, indent=2))
    status = summary["details"]["status"]
    return 0 if all(v in ("ran", "skipped") for v in status.values()) else 2


register_stage("pipeline", "every stage in order (classifier, CAMs, CRF, AffinityNet, random walk, DeepLab): "
               "resumable, shardable, writes OUT/summary.json (transcam_nb/pipeline/)",
               _pipeline_args)(run_pipeline_command)
for _name, _help in (
        ("crf", "pipeline stage: la/ha labels (argmax + dense CRF) from the TransCAM maps in OUT/cams"),
        ("affinity", "pipeline stage: train AffinityNet on OUT/crf (resumable)"),
        ("randomwalk", "pipeline stage: random walk of the CAMs over AffinityNet's affinities (+ CRF)"),
        ("segment", "pipeline stage: train DeepLab on the random-walk labels, score it on val")):
    register_stage(_name, _help, lambda p, _s=_name: _pipeline_args(p, stage=_s))(run_pipeline_command)


# ----------------------------------------------------------------------------- diagnostics
def _diagnostics_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p, required=True, help="weights (state_dict or a dict with 'model')")
    add_profile(p, default="tiny", help="tiny | paper: the network and scales (default tiny)")
    add_set(p)
    add_data_root(p, required=True, help="the benchmark folder (VOC layout, with instances.json)")
    p.add_argument("--split", default="val")
    p.add_argument("--scales", default=None, help="comma-separated (default: the profile's)")
    p.add_argument("--variants", default=None, help="comma-separated refinement variants (default: all)")
    p.add_argument("--fixed-taus", default=None, help="default: the profile's bg_threshold and 0.3")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--attention-only", action="store_true")
    p.add_argument("--size", type=int, default=None, help="--attention-only: input size (default: the image's)")
    p.add_argument("--json", default=None, help="write the results here")
    add_runtime(p, threads_default=1)


@register_stage("diagnostics", "coverage/precision of every refinement variant and the attention diagnostic on "
                "the synthetic benchmark (the book layer's transcam_nb/diagnostics.py)", _diagnostics_args)
def run_diagnostics(args: argparse.Namespace) -> int:
    # diagnostics belongs to the book layer, on top of the library; the command line reaches it
    # by name so that no library module imports it
    return importlib.import_module("transcam_nb.diagnostics").run_cli(args)


# ----------------------------------------------------------------------------- seeds
def _seeds_args(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    add_out(p, "folder of the runs: one resumable pipeline run per seed (OUT/seed<S>-<key>)")
    p.add_argument("--results", default=None, help="the results file to (re)write (default: the committed one, "
                   "transcam_nb/results/seeds-<profile>.json)")
    add_data_root(p)
    add_set(p, "a profile field (not seed: see --seeds)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline setting (transcam_nb.config.PipelineConfig), repeatable")
    p.add_argument("--pseudo-limit", type=int, default=None, help="only the first N pseudo-label images")
    p.add_argument("--val-limit", type=int, default=None, help="only the first N validation images")
    p.add_argument("--no-book-row", action="store_true",
                   help="do not also run seed 0 at the profile's own pipeline settings (the row the book checks)")
    add_runtime(p)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds: give at least one seed")
    return seeds


@register_stage("seeds", "the pipeline once per seed, one results file with every seed's numbers and the row the "
                "book checks (transcam_nb/pipeline/seeds.py)", _seeds_args)
def run_seeds_command(args: argparse.Namespace) -> int:
    from ..pipeline.seeds import (
        command_line,
        committed_table,
        run_seeds,
        seed_frame,
    )

    seeds = _parse_seeds(args.seeds)
    prof = profile_from_args(args)
    cfg = _pipeline_settings(args, prof, {}, ("pseudo_limit", "val_limit"))
    results = args.results or committed_table(prof)
    table = run_seeds(prof, seeds, args.out, results, config=cfg, check_row=not args.no_book_row,
                      progress=not args.no_progress, command=command_line(args.argv))
    print(seed_frame(table).round(2).to_string())
    return 0 if all(r["complete"] for r in table["runs"]) else 2


# ----------------------------------------------------------------------------- variant-seeds
def _variant_seeds_args(p: argparse.ArgumentParser) -> None:
    add_profile(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--results", default=None, help="the results file to (re)write (default: the committed one, "
                   "transcam_nb/results/variants-<profile>.json)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N evaluation images (default: all, as chapters 5 and 8; with a limit the "
                        "book's check does not find its row)")
    add_data_root(p)
    add_set(p, "a profile field (not seed: see --seeds)")
    add_from_scratch(p, "the paper profile's classifier")
    add_runtime(p)


@register_stage("variant-seeds", "chapter 5's refinement variants and chapter 8's learned aggregation on the "
                "evaluation split, once per seed (the classifiers from the classifier cache under "
                "$TRANSCAM_ARTIFACTS, trained where missing); one results file with every seed's mIoU at the best "
                "and the fixed τ, whose seed-0 row the book checks (transcam_nb/pipeline/variants.py)",
                _variant_seeds_args)
def run_variant_seeds_command(args: argparse.Namespace) -> int:
    from ..pipeline.seeds import command_line
    from ..pipeline.variants import committed_variants, refinement_gain, run_variant_seeds, variant_frame

    seeds = _parse_seeds(args.seeds)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit: expected a positive number of images, got {args.limit}")
    prof = profile_from_args(args)
    if "seed" in {s.split("=", 1)[0].strip() for s in args.set}:
        raise UsageError("--set seed=...: give the seeds with --seeds")
    results = args.results or committed_variants(prof)
    table = run_variant_seeds(prof, seeds, results, limit=args.limit, progress=not args.no_progress,
                              from_scratch=args.from_scratch, command=command_line(args.argv))
    print(variant_frame(table).round(2).to_string())
    for what, names in (("chapter 5's variants", [v[0] for v in table["settings"]["variants"] if v[1] != "learned"]),
                        ("with the learned aggregation", None)):
        gain = refinement_gain(table, names)
        print(f"best refinement at the best τ ({what}, mean over seeds {table['seeds']}): {gain['name']}, "
              f"{gain['mean']:+.2f} ± {gain['spread']:.2f} points from CAM")
    print(f"written: {results}")
    return 0
