"""What every command shares: the stage registry, the error type, and the one vocabulary of flags.

Flags mean the same thing in every command that has them:

``--profile``      tiny | paper | coco (default ``$TRANSCAM_PROFILE`` or tiny)
``--set K=V``      override a field of the profile (or, for ``pretrain``, of its pretrain settings);
                   values follow :func:`transcam_nb.config.parse_value`
``--data-root``    the VOC-layout folder holding ``JPEGImages/`` (``--voc-root``: deprecated alias); for
                   ``--profile coco`` the MS COCO folder holding ``annotations/instances_*.json``
``--sbd-root``     SBD, for the ``train_aug`` list (train, pipeline)
``--checkpoint``   trained classifier weights to *use* (cams, pipeline, diagnostics)
``--init``         weights to *start training from* (train, pipeline's classifier)
``--out``          the output folder (resumable)
``--shard i/n``    the per-image share of this process (default torchrun's RANK/WORLD_SIZE)
``--on-error``     cams: ``abort`` on an unreadable image (default) or ``skip`` it

For the paper profile, ``--data-root``, ``--sbd-root`` and ``--init`` default to
``$TRANSCAM_VOC_ROOT``, ``$TRANSCAM_SBD_ROOT`` and ``$TRANSCAM_INIT``; for the coco profile
``--data-root`` and ``--init`` to ``$TRANSCAM_COCO_ROOT`` and ``$TRANSCAM_INIT``
(:func:`transcam_nb.config.paths_from_environment`, as in the book's Setup cell).
``--device``, ``--threads``, ``--no-progress``
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger("transcam_nb.cli")

__all__ = ["UsageError", "one_line", "Stage", "STAGES", "register_stage", "parse_shard", "parse_floats", "parse_model_args",
           "add_profile", "add_set", "add_data_root", "add_sbd_root", "add_checkpoint", "add_init", "add_from_scratch", "add_out", "add_shard",
           "add_runtime", "profile_from_args"]


class UsageError(SystemExit):
    """Bad input on the command line: exits with status 2 after :func:`transcam_nb.cli.main`
    printed the one line ``str(error)``."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = str(message)

    def __str__(self) -> str:
        return self.message


def one_line(error: BaseException) -> str:
    """The error's message on one line (a library message may quote a multi-line one)."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


@dataclass
class Stage:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: the registry of command-line stages
STAGES: dict[str, Stage] = {}


def register_stage(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> exit code`` as the stage ``name``."""

    def deco(run):
        STAGES[name] = Stage(name, help, add_arguments, run)
        return run

    return deco


# ----------------------------------------------------------------------------- parsing helpers
def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)``; without it, torchrun's ``RANK``/``WORLD_SIZE``; else ``(0, 1)``."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise UsageError(f"--shard {text}: need 0 <= i < n")
        return i, n
    if "WORLD_SIZE" in env:
        n = int(env["WORLD_SIZE"])
        i = int(env.get("RANK", env.get("LOCAL_RANK", 0)))
        return i, n
    return 0, 1


def parse_floats(text: str, what: str) -> tuple:
    """``"256,512,768"`` → ``(256, 512, 768)`` (values >= 16 that are whole become ints)."""
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UsageError(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise UsageError(f"{what} is empty")
    return tuple(int(v) if v.is_integer() and v >= 16 else v for v in vals)


def parse_model_args(items: Sequence[str] | None) -> dict:
    from ..config import parse_overrides

    return parse_overrides(items, None, "--model-arg")


# ----------------------------------------------------------------------------- the flags
class _DeprecatedAlias(argparse.Action):
    """Stores like ``store``; warns when the option was spelled with a deprecated alias."""

    def __init__(self, *a, deprecated: Sequence[str] = (), **k):
        self.deprecated = tuple(deprecated)
        super().__init__(*a, **k)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            preferred = next(o for o in self.option_strings if o not in self.deprecated)
            log.warning("%s is deprecated; use %s", option_string, preferred)
        setattr(namespace, self.dest, values)


def add_profile(p, help: str = "tiny | paper | coco (default: $TRANSCAM_PROFILE or tiny)", default=None) -> None:
    p.add_argument("--profile", default=default, help=help)


def add_set(p, what: str = "a profile field") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {what}, repeatable (e.g. --set lr=1e-4 --set resize_long=[256,512])")


def add_data_root(p, required: bool = False, help: str | None = None) -> None:
    p.add_argument("--data-root", "--voc-root", dest="data_root", default=None, required=required,
                   action=_DeprecatedAlias, deprecated=("--voc-root",),
                   help=(help or "VOC-layout folder holding JPEGImages/ (paper profile default: $TRANSCAM_VOC_ROOT; "
                         "the tiny profile generates its benchmark without it); --profile coco: the MS COCO folder "
                         "holding annotations/instances_*.json (default: $TRANSCAM_COCO_ROOT)")
                   + "; --voc-root is a deprecated alias")


def add_sbd_root(p) -> None:
    p.add_argument("--sbd-root", default=None, help="SBD benchmark_RELEASE (or converted SegmentationClassAug) for "
                   "building train_aug (paper profile default: $TRANSCAM_SBD_ROOT)")


def add_checkpoint(p, required: bool = False, help: str | None = None) -> None:
    p.add_argument("--checkpoint", default=None, required=required,
                   help=help or "trained classifier weights to use (state_dict, official key names)")


def add_init(p, help: str | None = None) -> None:
    p.add_argument("--init", default=None,
                   help=help or "weights to start the classifier's training from (heads are dropped; default: "
                                "$TRANSCAM_INIT for the paper profile, else the profile's init_checkpoint)")


def add_from_scratch(p, what: str = "the paper profile's networks") -> None:
    p.add_argument("--from-scratch", action="store_true",
                   help=f"allow {what} to start from random weights (they refuse without their init files)")


def add_out(p, help: str = "output folder (resumable)", required: bool = True) -> None:
    p.add_argument("--out", required=required, default=None, help=help)


def add_shard(p) -> None:
    p.add_argument("--shard", default=None, help="i/n: process every n-th image starting at i "
                   "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")


def add_runtime(p, device_default=None, threads_default=None) -> None:
    p.add_argument("--device", default=device_default,
                   help="cpu | cuda | cuda:1 | mps | auto (default: the profile's)")
    p.add_argument("--threads", type=int, default=threads_default, help="torch CPU threads (default: the profile's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def profile_from_args(args, *, data_root: bool = True, **extra):
    """The profile of ``--profile`` with its path variables
    (:func:`transcam_nb.config.paths_from_environment`: paper ``$TRANSCAM_VOC_ROOT``,
    ``$TRANSCAM_SBD_ROOT``, ``$TRANSCAM_INIT``; coco ``$TRANSCAM_COCO_ROOT``, ``$TRANSCAM_INIT``),
    then ``--set``, ``--data-root`` (unless
    ``data_root=False``), ``--device``, ``--threads`` and ``extra`` applied (flags that are absent
    or ``None`` change nothing)."""
    from ..config import get_profile, parse_overrides, paths_from_environment

    try:
        prof = get_profile(getattr(args, "profile", None))
    except ValueError as e:
        raise UsageError(f"--profile: {e}") from None
    env = paths_from_environment(prof.name)
    if env:
        prof = prof.replace(**env)
    over = parse_overrides(getattr(args, "set", None), prof)
    for flag in (("data_root",) if data_root else ()) + ("device", "threads"):
        v = getattr(args, flag, None)
        if v is not None:
            over[flag] = str(v) if flag == "data_root" else v
    over.update({k: v for k, v in extra.items() if v is not None})
    return prof.replace(**over) if over else prof
