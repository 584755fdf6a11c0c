"""What a checkpoint holds and how a run resumes: RNG states, processes, devices, files, the
resume check."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..artifacts import atomic_path, read_jsonl, write_jsonl
from ..artifacts import json_default as _json_default
from ..models.checkpoints import read_checkpoint
from .config import CHECKPOINT_FORMAT, LoopConfig

__all__ = ["dist_env", "amp_setup", "truncate_log", "load_training_checkpoint"]


def dist_env() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, ws, local


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """Join torchrun's process group when ``WORLD_SIZE > 1``. Returns (rank, world, created)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    rank, ws, _ = dist_env()
    if ws <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _rng_state() -> dict:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_dict(np.random.get_state()),
        "python": _py_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state_to_dict(s) -> dict:
    return {"keys": torch.from_numpy(np.asarray(s[1], np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "gauss": float(s[4])}


def _py_state_to_list(s) -> list:
    version, internal, gauss = s
    return [int(version), list(internal), gauss]


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(st["cuda"])
        except Exception:  # another GPU count: keep the fresh seeds
            pass


def _to_device(obj, device, non_blocking=False, channels_last=False):
    if isinstance(obj, torch.Tensor):
        t = obj.to(device, non_blocking=non_blocking)
        if channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device, non_blocking, channels_last) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device, non_blocking, channels_last) for k, v in obj.items()}
    return obj


def _batch_size_of(x) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, (list, tuple)) and x:
        return _batch_size_of(x[0])
    if isinstance(x, dict) and x:
        return _batch_size_of(next(iter(x.values())))
    return 1


def amp_setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler): :func:`transcam_nb.device.precision_setup`."""
    from ..device import precision_setup

    try:
        return precision_setup(mode, device)
    except ValueError as e:
        raise RuntimeError(str(e)) from None


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def truncate_log(path: Path, step: int, key: str = "step") -> None:
    """Keep only the log records with ``key`` <= ``step`` (a resumed run re-does the later ones)."""
    if not path.is_file():
        return
    write_jsonl(path, [r for r in read_jsonl(path) if int(r.get(key, 0)) <= step])


def _save_torch(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_training_checkpoint(path: str | os.PathLike, format: str = CHECKPOINT_FORMAT) -> dict:
    """Read a ``last.pt`` written by :func:`train_loop` (``weights_only=True``: data only)."""
    return read_checkpoint(path, what="training checkpoint", format=format)


_PROFILE_TRAINING_FIELDS = ("model", "model_overrides", "dataset", "train_split", "num_fg", "crop_size",
                            "resize_long", "jitter", "w_conv", "w_trans", "drop_path_rate", "synthetic",
                            "label_source")


def _check_resume_compatible(ck: dict, cfg: LoopConfig, run_info: dict, *, global_batch: int, path: Path,
                             settings: dict | None = None, settings_free=()) -> None:
    """Raise ``ValueError`` listing what differs between a checkpoint and this run: the loop
    settings (except :attr:`LoopConfig.RESUME_FREE`), the profile's training fields, the stage's
    ``settings`` (except ``settings_free``) and the effective batch."""
    old = dict(ck.get("config") or {})
    new = cfg.to_dict()
    defaults = LoopConfig().to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new
             if k not in LoopConfig.RESUME_FREE and not (k not in old and new[k] == defaults[k])  # older files
             and json.dumps(old.get(k), default=str) != json.dumps(new[k], default=str)]
    old_prof = (ck.get("run_info") or {}).get("profile") or {}
    new_prof = json.loads(json.dumps(run_info.get("profile") or {}, default=_json_default))
    for k in _PROFILE_TRAINING_FIELDS:
        if k not in old_prof and k not in new_prof:
            continue
        if json.dumps(old_prof.get(k), sort_keys=True) != json.dumps(new_prof.get(k), sort_keys=True):
            diffs.append(f"profile.{k}: {old_prof.get(k)!r} -> {new_prof.get(k)!r}")
    if settings is not None:
        old_set = ck.get("settings") or {}
        new_set = json.loads(json.dumps(settings, default=_json_default))
        diffs += [f"{k}: {old_set.get(k)!r} -> {new_set.get(k)!r}" for k in sorted(set(old_set) | set(new_set))
                  if k not in settings_free and k not in LoopConfig.RESUME_FREE
                  and json.dumps(old_set.get(k), sort_keys=True) != json.dumps(new_set.get(k), sort_keys=True)
                  and not any(d.startswith(f"{k}: ") for d in diffs)]
    if int(ck.get("effective_batch", global_batch)) != global_batch:
        diffs.append(f"effective batch: {ck.get('effective_batch')} -> {global_batch}")
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: it was made with other settings ({'; '.join(diffs)}). Use resume=False "
            "(--no-resume) to start again in this folder, or another output folder.")
