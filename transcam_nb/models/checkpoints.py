"""Loading checkpoint files into our Conformer / TransCAM networks, with clear errors.

Accepted files (all read with ``torch.load(..., weights_only=True)``: data, never code):

* the official ImageNet Conformer files (``Conformer_small_patch16.pth`` …): a dict with a
  ``"model"`` entry or a bare state_dict, 1000-class heads;
* the authors' released TransCAM classifier (their ``Net_sm`` layout, 21 classes);
* our own training checkpoints (a dict with ``"model"`` plus optimizer state etc.).

This module is the package's one reader of checkpoint files: :func:`read_checkpoint` (the whole
dict: training checkpoints of :mod:`transcam_nb.engine`, DeepLab and AffinityNet files) and
:func:`read_state_dict` (name → tensor, also from ``.safetensors``) are what every other module
calls; both raise :class:`CheckpointError` (and :class:`CheckpointNotFoundError`, also a
``FileNotFoundError``, for a missing file).

Key prefixes added by wrappers (``module.`` from DataParallel/DDP, ``_orig_mod.`` from
``torch.compile``) are removed. When the classification heads do not fit the model (another
number of classes, or the official Linear head against TransCAM's 3×3 conv head) they are
dropped and the model keeps its freshly initialised heads, which is how fine-tuning starts
(docs/reference.md §4). Anything else that does not fit is an error that names the file and lists
the missing, unexpected and mis-shaped keys: never a silent partial load.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import InputError

__all__ = ["CheckpointError", "CheckpointNotFoundError", "read_checkpoint", "read_state_dict", "load_checkpoint",
           "HEAD_KEYS"]

HEAD_KEYS = ("conv_cls_head.weight", "conv_cls_head.bias", "trans_cls_head.weight", "trans_cls_head.bias")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint", format: str | None = None) -> dict:
    """The dict stored in ``path``, read safely (``torch.load(weights_only=True)``, or the
    safetensors package for ``.safetensors``). ``what`` names the file in messages; ``format``,
    when given, must equal the file's ``"format"`` entry (our training checkpoints carry one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CheckpointError(f"{str(path)!r} is a .safetensors file; `pip install safetensors` to read it") from e
        try:
            obj = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"could not read {what} {str(path)!r} as safetensors: {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
            raise CheckpointError(
                f"could not read {what} {str(path)!r}: it is truncated, corrupt or not a PyTorch "
                f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        except Exception as e:  # weights_only refuses arbitrary objects
            raise CheckpointError(f"could not read {what} {str(path)!r} as plain tensors "
                                  f"(weights_only=True): {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {str(path)!r} holds a {type(obj).__name__}, expected a dict (a state_dict "
                              "or a dict with a 'model' entry)")
    if format is not None and obj.get("format") != format:
        raise CheckpointError(f"{str(path)!r} is not a transcam_nb {what} (format {format!r}, found "
                              f"{obj.get('format')!r})")
    return obj


def read_state_dict(path: str | os.PathLike, *, key: str | None = None,
                    what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` (safely, :func:`read_checkpoint`) and normalise its key names.

    ``key`` selects an entry of a dict checkpoint; by default ``"model"``, ``"state_dict"``,
    ``"model_state"`` or ``"state_dict_ema"`` is used when present, else the dict itself.
    """
    obj = read_checkpoint(path, what=what)
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"checkpoint {str(path)!r} has no entry {key!r}; entries: {sorted(obj)[:20]}")
        obj = obj[key]
    else:
        for k in ("model", "state_dict", "model_state", "state_dict_ema"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {str(path)!r}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "is this a state_dict?")
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        sd[k] = v
    if not sd:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no tensors")
    return sd


def load_checkpoint(model: nn.Module, source, *, drop_mismatched_heads: bool = True,
                    key: str | None = None) -> dict:
    """Load ``source`` (a path or a state_dict) into ``model`` strictly.

    Heads (``conv_cls_head.*``, ``trans_cls_head.*``) whose shape does not fit are dropped when
    ``drop_mismatched_heads`` (they keep the model's initialisation). Returns a report dict
    with ``dropped_heads`` and the file name. Raises :class:`CheckpointError` listing missing,
    unexpected and mis-shaped keys otherwise.
    """
    name = str(source) if not isinstance(source, dict) else "<state_dict>"
    sd = read_state_dict(source, key=key) if not isinstance(source, dict) else dict(source)
    own = model.state_dict()
    dropped = []
    if drop_mismatched_heads:
        for k in HEAD_KEYS:
            if k in sd and k in own and tuple(sd[k].shape) != tuple(own[k].shape):
                dropped.append(k)
        for k in dropped:
            del sd[k]
        # a head missing from the file (e.g. deleted by the user) is also fine
    missing = [k for k in own if k not in sd and not (drop_mismatched_heads and k in HEAD_KEYS)]
    unexpected = [k for k in sd if k not in own]
    misshaped = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sd
                 if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {name!r} does not fit {type(model).__name__}"
                 f" ({getattr(model, 'default_cfg_name', '') or 'this configuration'}):"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s): {_short(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): {_short(unexpected)}")
        if misshaped:
            lines.append(f"  {len(misshaped)} mis-shaped key(s): " + _short(
                [f"{k} file{list(a)} vs model{list(b)}" for k, a, b in misshaped]))
        lines.append("  (was the model built with the same name and overrides as the checkpoint?)")
        raise CheckpointError("\n".join(lines))
    heads_absent = [k for k in HEAD_KEYS if k in own and k not in sd]  # dropped, or not in the file
    result = model.load_state_dict(sd, strict=not heads_absent)
    if heads_absent:  # only the heads may be missing
        left = [k for k in result.missing_keys if k not in heads_absent]
        if left or result.unexpected_keys:  # pragma: no cover - guarded above
            raise CheckpointError(f"checkpoint {name!r}: unexpected load result {result}")
    return {"file": name, "dropped_heads": dropped, "num_tensors": len(sd)}


def _short(items, n=8):
    items = list(items)
    s = ", ".join(items[:n])
    return s + (f", … (+{len(items) - n} more)" if len(items) > n else "")
