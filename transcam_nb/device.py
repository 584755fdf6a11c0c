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


__all__ = ["DeviceUnavailableError", "get_device", "seed_everything", "set_threads", "autocast", "amp_dtype", "describe",
           "PRECISIONS", "resolve_precision", "precision_dtype", "precision_autocast", "precision_setup", "channels_last"]


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


#: the ``precision`` option: float32, bfloat16 autocast, float16 autocast (CUDA only)
PRECISIONS = ("fp32", "bf16", "fp16")
_PRECISION_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "none": "fp32", "off": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}


def resolve_precision(precision, device: torch.device | str | None = None, *, arg: str = "precision") -> str:
    """Normalise a precision choice to ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Accepts those words, ``None`` (fp32), the old ``--amp`` spellings (``"none"``/``"off"``) and
    ``torch.float32/bfloat16/float16``. ``"fp16"`` needs CUDA (CPU float16 autocast has no fast
    kernels and no loss scaler); asking for it elsewhere raises a ``ValueError`` naming ``arg``.
    """
    if precision is None:
        return "fp32"
    if isinstance(precision, torch.dtype):
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(precision, str(precision))
    key = _PRECISION_ALIASES.get(str(precision).lower())
    if key is None:
        raise ValueError(f"{arg}={precision!r} is not understood; expected one of {PRECISIONS}")
    if key == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"{arg}='fp16' needs a CUDA device (got {torch.device(device).type}); use 'bf16' or 'fp32'")
    return key


def precision_setup(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Training's precision policy: ``(autocast dtype or None, use a GradScaler)``.

    ``"auto"``: bf16 on a CUDA GPU that has it, else fp16 with a gradient scaler; **fp32 on a
    CPU** (measured: bf16 is 10-75x slower than fp32 on a CPU without bf16 units, and no CPU
    default was measured faster). ``"fp32"`` (also ``"off"``/``"none"``) is the authors' exact
    numerics; ``"bf16"``; ``"fp16"`` (CUDA only, with a scaler).
    """
    if str(precision).lower() == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    key = resolve_precision(precision, device)
    if key == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' was asked for but {torch.cuda.get_device_name(device)} has no bf16; "
                         "use 'fp16' (with a gradient scaler) or 'fp32'")
    return precision_dtype(key), key == "fp16"


def precision_dtype(precision) -> torch.dtype | None:
    """The autocast dtype of a precision (``None`` for fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def precision_autocast(device: torch.device, precision):
    """Autocast for ``precision`` on ``device`` (a no-op context for fp32)."""
    return autocast(device, precision_dtype(resolve_precision(precision, device)))


@contextlib.contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True):
    """Run ``model`` with its convolution weights in channels_last memory format, then restore.

    Reduced-precision convolutions are much faster in channels_last on CPUs with bf16 units
    (AMX/AVX-512-BF16) and on GPUs. Inputs should be converted with
    ``x.contiguous(memory_format=torch.channels_last)``. A model that was already channels_last
    is left so.
    """
    w = next((p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    if not enabled or w is None or (w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


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
