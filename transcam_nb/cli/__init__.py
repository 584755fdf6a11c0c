"""Command line: ``python -m transcam_nb <command> ...`` for headless, resumable, sharded runs.

Every argparse definition of the package lives in this package, with one vocabulary of flags
(:mod:`.common`: ``--profile``, ``--set``, ``--data-root``, ``--checkpoint``, ``--init``, ``--out``,
``--shard``, ``--device``, ``--threads``, ``--no-progress``). Commands:

``cams``
    Multi-scale TransCAM inference for every image of a list, in the pipeline's cams layout:
    ``<out>/cams/transcam/<id>.npz`` (``cams/cam/`` with ``--method none``, else the method's
    name; format: :mod:`transcam_nb.pseudo`) with ``<out>/cams/config.json``, and, for each
    background threshold τ, ``<out>/labels_t<τ>/<id>.png`` (VOC palette PNG, Eq. 7-8). Every write is atomic; finished
    images are skipped, so a killed run resumes where it stopped. An image that cannot be read
    stops the run naming it; ``--on-error skip`` skips it instead and lists it in
    ``<out>/cams/report.json`` (``report.<i>-of-<n>.json`` per shard). Shard with ``--shard i/n`` or
    run under ``torchrun`` (``RANK``/``WORLD_SIZE`` give the shard; each process uses its
    ``LOCAL_RANK`` GPU)::

        python -m transcam_nb cams --profile paper --checkpoint transcam_6485.pth \\
            --data-root VOCdevkit/VOC2012 --split train --out runs/cams
        torchrun --nproc_per_node=4 -m transcam_nb cams ...   # 4 GPUs, 4 shards

``evaluate``
    Pseudo-label mIoU of a folder of CAM files (``.npz``, or the authors' ``.npy`` with
    ``--allow-pickle``) or label PNGs, against the ground-truth masks. Prints the per-class table
    at the τ fixed in advance (the profile's ``bg_threshold`` unless ``--fixed-tau``) and, with
    ``--sweep``, the τ curve over :data:`transcam_nb.metrics.DEFAULT_THRESHOLDS` (0.00 … 0.90)
    with its best τ (chosen on the ground truth, so optimistic: both are shown)::

        python -m transcam_nb evaluate --pred-dir runs/cams/cams/transcam --data-root VOCdevkit/VOC2012 \\
            --split train --sweep --json runs/cams/eval.json

``train``
    The classifier (Eq. 6; :mod:`transcam_nb.train`), resumable, under ``torchrun`` with DDP::

        python -m transcam_nb train --profile tiny --out runs/cls        # generates the benchmark
        python -m transcam_nb train --profile paper --data-root VOCdevkit/VOC2012 \\
            --init Conformer_small_patch16.pth --out runs/cls

``pretrain``
    The tiny profile's formula-driven pretraining (:mod:`transcam_nb.pretrain`).

``pipeline``, ``crf``, ``affinity``, ``randomwalk``, ``segment``
    The rest of the pipeline (:mod:`transcam_nb.pipeline`): every stage in order with
    ``<out>/summary.json``, or one stage at a time::

        python -m transcam_nb pipeline --profile tiny --out DIR --set seed=1 --pseudo-limit 64 --val-limit 50

``diagnostics``
    Coverage / precision of every refinement variant and the attention diagnostic
    (:mod:`transcam_nb.diagnostics`).

``seeds``, ``variant-seeds``
    The committed tables over seeds whose seed-0 rows the book checks: the whole pipeline once per
    seed (:mod:`transcam_nb.pipeline.seeds`, ``transcam_nb/results/seeds-<profile>.json``), and the
    refinement variants of chapters 5 and 8 on the evaluation split once per seed
    (:mod:`transcam_nb.pipeline.variants`, ``transcam_nb/results/variants-<profile>.json``)::

        python -m transcam_nb variant-seeds --profile tiny --seeds 0,1,2

Bad input (an unknown field, a missing file, a malformed value: :class:`UsageError`, the
library's :class:`transcam_nb.errors.InputError` and missing files (``OSError``), see
:data:`BAD_INPUT`) ends the command with one line naming the problem on stderr and exit status
2, without a traceback; any other exception is a bug and keeps its traceback. Inputs are checked
before anything is written, so a command that fails there leaves no state behind. Progress messages go
through :mod:`logging` (logger ``transcam_nb``), shown at INFO level on the command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import cams, stages  # noqa: F401  (register the commands)
from ..errors import InputError
from .common import STAGES, Stage, UsageError, one_line, parse_shard, register_stage

__all__ = ["Stage", "STAGES", "UsageError", "BAD_INPUT", "register_stage", "build_parser", "main", "parse_shard"]

PROG = "python -m transcam_nb"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="TransCAM book: headless pipeline stages")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    sub.required = True
    for st in STAGES.values():
        sp = sub.add_parser(st.name, help=st.help, description=st.help)
        st.add_arguments(sp)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test or a notebook may replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _show_progress_messages() -> None:
    """INFO messages of the package's loggers on stderr (once), as a command line expects."""
    logger = logging.getLogger("transcam_nb")
    if not any(getattr(h, "_transcam_cli", False) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        h._transcam_cli = True
        logger.addHandler(h)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


#: what the command line answers with one line and exit status 2 (besides :class:`UsageError`):
#: the library's bad-input errors and files that are missing or cannot be opened. Anything else
#: is a bug and keeps its traceback.
BAD_INPUT = (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed (for results files)
    _show_progress_messages()
    try:
        return int(STAGES[args.stage].run(args) or 0)
    except UsageError as e:
        msg = one_line(e)
        print(f"{PROG} {args.stage}: error: {msg}", file=sys.stderr)
        raise UsageError(msg) from None
    except BAD_INPUT as e:
        msg = one_line(e)
        print(f"{PROG} {args.stage}: error: {msg}", file=sys.stderr)
        raise UsageError(msg) from None
