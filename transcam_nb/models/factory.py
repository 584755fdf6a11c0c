"""The classifier network a profile describes, and where its initial weights come from.

:func:`build_model_for_profile` builds the profile's Conformer with ``K + 1`` outputs and loads
its initial checkpoint with both classification heads dropped (as the authors' code does).
:func:`resolve_init` turns an init argument into a file path (``"package:NAME"`` means a file
shipped in :mod:`transcam_nb.weights`) and refuses, for profiles that need one, to start from
random weights unless ``from_scratch=True`` is asked for explicitly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from ..errors import InputError
from ..weights import resolve_checkpoint
from . import create_model
from .checkpoints import HEAD_KEYS, load_checkpoint, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Profile

__all__ = ["build_model_for_profile", "require_init", "MissingInitError",
           "PROFILES_NEEDING_INIT"]

#: profiles whose numbers assume pretrained initial weights: their classifier, AffinityNet and
#: DeepLab refuse to start from random weights unless ``from_scratch=True`` (the tiny profile
#: starts from its shipped pretext weights, or from scratch when its init is removed)
PROFILES_NEEDING_INIT = ("paper", "coco")


class MissingInitError(InputError):
    """A profile that needs pretrained initial weights was asked to train without them."""


def require_init(init, *, who: str, argument: str, expected: str, from_scratch: bool = False,
                 needs_init: bool = True) -> Path | None:
    """The initial-weights path of a training stage, or an error naming what is missing.

    ``init`` is a path, ``"package:NAME"`` or ``None``. When it is ``None`` and the profile
    ``needs_init`` (the paper profile: its numbers assume ImageNet weights), a
    :class:`MissingInitError` names ``who``, the ``expected`` file and the ``argument`` that gives
    it (e.g. ``"init=FILE / --init FILE"``), on one line, unless
    ``from_scratch`` (``--from-scratch``) asks for random weights on purpose. A given path that
    does not exist is a :class:`FileNotFoundError` naming it.
    """
    if init is None or init == "":
        if needs_init and not from_scratch:
            raise MissingInitError(
                f"{who} needs initial weights and none were given: pass {expected} as {argument}, "
                "or from_scratch=True / --from-scratch to start from random weights on purpose")
        return None
    p = resolve_checkpoint(init)
    if not p.is_file():
        raise FileNotFoundError(f"initial weights {p} do not exist (expected {expected}, given as {argument})")
    return p


def build_model_for_profile(profile: "Profile", init: str | os.PathLike | None = None, *,
                            num_fg: int | None = None, verbose: bool = True) -> nn.Module:
    """The profile's network with ``K + 1`` outputs (``K = num_fg``, default the profile's),
    initialised from ``init`` (or the profile's ``init_checkpoint``) when given.

    As the authors' code (docs/reference.md, classifier training), both classification heads of
    the initial checkpoint are **always** discarded, even when their shapes would fit (e.g.
    starting from an already trained 21-class file): the network keeps freshly initialised heads
    and every other tensor must load (a clear :class:`~transcam_nb.models.CheckpointError`
    otherwise).
    """
    K = int(num_fg if num_fg is not None else profile.num_fg)
    kw = dict(profile.model_overrides)
    kw.setdefault("drop_path_rate", profile.drop_path_rate)
    model = create_model(profile.model, num_classes=K + 1, **kw)
    init = init if init is not None else profile.init_checkpoint
    if init:
        init = resolve_checkpoint(init)
        sd = read_state_dict(init)
        own = model.state_dict()
        dropped = [k for k in HEAD_KEYS if k in sd]
        for k in HEAD_KEYS:  # the authors delete the heads; keep the model's own initialisation
            sd[k] = own[k]
        report = load_checkpoint(model, sd, drop_mismatched_heads=False)
        if verbose:
            logging.getLogger("transcam_nb.models").info(
                "[train] initialised %s from %s (%d tensors; heads dropped: %s)", profile.model, Path(init).name,
                report["num_tensors"] - len(HEAD_KEYS), ", ".join(dropped) or "none in file")
    return model
