"""Device, seeding, threads and mixed-precision policy, decided in one place.

No module hard-codes a CUDA device: every module asks :func:`get_device` (or takes a
``device=`` argument) and moves tensors with ``.to(device)``.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import InputError


class DeviceUnavailableError(InputError, RuntimeError):
    """The device asked for (``--device cuda``, ``device="mps"``) is not available here."""


__all__ = ["DeviceUnavailableError", "get_device", "seed_everything", "set_threads", "autocast", "amp_dtype", "describe"]


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return the device to run on.

    ``prefer`` may be ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``None``/``"auto"``
    (CUDA if present, else MPS, else CPU). The environment variable ``TRANSCAM_DEVICE``
    overrides ``None``/``"auto"``. Asking for a device that is not available raises a
    ``RuntimeError`` naming it.
    """
    if isinstance(prefer, torch.device):
        return prefer
    choice = (prefer or os.environ.get("TRANSCAM_DEVICE") or "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            # under torchrun each process takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(choice)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {choice!r} was requested but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailableError(f"device {choice!r} was requested but MPS is not available on this machine")
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). ``deterministic`` also asks torch for
    deterministic kernels (slower; used by the resume-equality tests)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True


def set_threads(n: int | None) -> None:
    """Set torch's intra-op threads (``None`` leaves torch's default)."""
    if n:
        torch.set_num_threads(int(n))


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype we use on ``device``: bf16 where supported, fp16 on older GPUs,
    ``None`` (no autocast) on CPU by default."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None | str = "auto"):
    """Context manager for mixed precision. ``dtype="auto"`` follows :func:`amp_dtype`;
    ``None`` disables autocast; ``torch.bfloat16`` on CPU uses CPU autocast."""
    if isinstance(dtype, str):
        dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device | None = None) -> dict:
    """A small dict of versions and device facts, printed by every notebook's Setup cell."""
    import platform

    device = device or get_device()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import timm

        info["timm"] = timm.__version__
    except Exception:  # pragma: no cover - timm is a hard dependency
        pass
    return info
