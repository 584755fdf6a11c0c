"""Pseudo labels from normalised CAMs (paper Eq. 7-8) and their files.

**Eq. 7** gives the background a constant score τ; **Eq. 8** takes the arg-max over
``[τ, M*_1, …, M*_K]``. As in the authors' code (docs/reference.md §3, §5), the score tensor is
float32 with τ in channel 0 and the normalised CAM of class ``k`` (0-based) in channel
``k + 1``; classes that are not in the image label have no CAM and score 0, so they lose to
background at any τ ≥ 0. Ties go to the lower channel (numpy's first arg-max), so a pixel whose
best class score equals τ is background.

Files
-----
**CAM files** (``.npz``, written by :func:`save_cams`, read by :func:`load_cams`)::

    cams     float32 (or float16) [K, H, W]  normalised CAMs of the K labelled classes,
                                             at the original image resolution
    classes  int64 [K]                       their class indices, 0-based (0 = aeroplane for VOC)
    size_hw  int64 [2]                       (H, W) of the original image
    meta     0-d unicode array (optional)    a JSON string: method, scales, blocks, model, ...

No pickles: read with ``np.load(path)``. An image with no labelled class has ``K = 0``.
:func:`load_cams` also reads the authors' ``out_cam/<id>.npy`` files (a pickled Python dict
``{class_index: HxW float32}``); that needs ``allow_pickle=True``, an explicit opt-in, because
unpickling can run code.

**Label maps** are 8-bit PNGs whose pixel values are the class ids (0 = background,
255 = ignore). :func:`save_label_png` writes them as palette ("P") images with the VOC colour
map, so they look like VOC's ``SegmentationClass`` files; ``np.asarray(Image.open(p))`` gives
the ids back (the authors write plain grey-scale "L" PNGs; both read back the same).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .artifacts import atomic_path
from .data.voc import voc_palette  # the VOC colour map (one implementation, in data/)
from .errors import InputError

__all__ = [
    "voc_palette",
    "score_tensor",
    "foreground_argmax",
    "label_map",
    "save_label_png",
    "load_label_png",
    "save_cams",
    "load_cams",
]


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_cams(cams, classes, num_fg: int, shape=None):
    cams = _np(cams)
    classes = np.asarray(_np(classes), dtype=np.int64).reshape(-1)
    if cams.ndim == 2 and classes.size == 1:
        cams = cams[None]
    if cams.ndim != 3:
        raise ValueError(f"cams must be [K, H, W], got shape {cams.shape}")
    if cams.shape[0] != classes.size:
        raise ValueError(f"{cams.shape[0]} CAMs but {classes.size} class indices")
    if classes.size and (classes.min() < 0 or classes.max() >= num_fg):
        raise ValueError(f"class indices {classes.tolist()} must lie in [0, {num_fg})")
    if len(set(classes.tolist())) != classes.size:
        raise ValueError(f"class indices {classes.tolist()} contain duplicates")
    if shape is not None and cams.shape[0] and tuple(cams.shape[1:]) != tuple(shape):
        raise ValueError(f"CAMs are {cams.shape[1:]} but the label map should be {tuple(shape)}")
    return cams, classes


def score_tensor(cams, classes, tau: float, num_fg: int = 20, shape=None) -> np.ndarray:
    """The float32 score tensor of Eq. 7: ``[1 + num_fg, H, W]``, channel 0 = τ, channel k+1 = CAM k."""
    cams, classes = _check_cams(cams, classes, num_fg, shape)
    hw = cams.shape[1:] if cams.shape[0] or shape is None else tuple(shape)
    if len(hw) != 2:
        raise ValueError("with no CAM at all, give the label map shape=(H, W)")
    scores = np.zeros((1 + num_fg, *hw), dtype=np.float32)
    scores[0] = tau
    scores[classes + 1] = cams
    return scores


def label_map(cams, classes, tau: float, num_fg: int = 20, shape=None) -> np.ndarray:
    """Pseudo label of Eq. 8: ``argmax([τ, cams…])`` over the float32 score tensor, as uint8 ``[H, W]``.

    ``cams`` ``[K, H, W]`` are normalised CAMs of the classes ``classes`` (0-based). ``shape``
    is needed only when ``K = 0`` (then everything is background).
    """
    return score_tensor(cams, classes, tau, num_fg, shape).argmax(0).astype(np.uint8)


def foreground_argmax(cams, classes, num_fg: int = 20, shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Best foreground score and its label per pixel: ``(max_k s_k, 1 + argmax_k s_k)``.

    ``s`` is the foreground part of the score tensor (absent classes 0); the arg-max is the
    first one, as in :func:`label_map`. ``label_map(…, τ)`` equals
    ``np.where(max > float32(τ), label, 0)``, which lets a τ sweep reuse one arg-max per image.
    """
    cams, classes = _check_cams(cams, classes, num_fg, shape)
    if not cams.shape[0]:
        if shape is None:
            raise ValueError("with no CAM at all, give shape=(H, W)")
        return np.zeros(tuple(shape), np.float32), np.ones(tuple(shape), np.int64)
    fg = np.zeros((num_fg, *cams.shape[1:]), dtype=np.float32)
    fg[classes] = cams
    arg = fg.argmax(0)
    mx = np.take_along_axis(fg, arg[None], 0)[0]
    return mx, arg.astype(np.int64) + 1


def save_label_png(path: str | os.PathLike, label, palette: bool = True) -> Path:
    """Write a label map (ids 0..255) as an 8-bit PNG, atomically; VOC palette by default."""
    from PIL import Image

    label = _np(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label ids must be in 0..255 to fit an 8-bit PNG, got {label.min()}..{label.max()}")
    img = Image.fromarray(np.ascontiguousarray(label.astype(np.uint8)))  # mode "L"
    if palette:
        img.putpalette(voc_palette())  # "L" -> "P", pixel values kept as palette indices
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette or grey-scale) as a uint8 ``[H, W]`` array of ids."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label PNG {path} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(f"{path} is a {im.mode!r} image; a label map must be an 8-bit palette or grey PNG")
            return np.asarray(im).copy()
    except (OSError, SyntaxError) as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise InputError(f"cannot decode label PNG {path} (corrupt or not an image): {e}") from None


def save_cams(path: str | os.PathLike, cams, classes, *, size_hw=None, meta: dict | None = None,
              dtype=np.float32, compress: bool = True) -> Path:
    """Write normalised CAMs and their class indices as ``.npz`` (format in the module docstring), atomically."""
    cams = _np(cams)
    classes = np.asarray(_np(classes), dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != classes.size:
        raise ValueError(f"cams must be [K, H, W] with K = len(classes) = {classes.size}, got {cams.shape}")
    if size_hw is None:
        size_hw = cams.shape[1:]
    arrays = {
        "cams": cams.astype(dtype, copy=False),
        "classes": classes,
        "size_hw": np.asarray(size_hw, dtype=np.int64).reshape(2),
    }
    if meta is not None:
        arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True, default=str))
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"CAM files are .npz; got {path.name!r}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
    return path


def load_cams(path: str | os.PathLike, allow_pickle: bool = False, with_meta: bool = False):
    """Read a CAM file: ``(cams float32 [K, H, W], classes int64 [K])`` (plus ``meta`` dict).

    Reads this package's ``.npz`` files and, with ``allow_pickle=True``, the authors' ``.npy``
    dict files (keys = class indices, values = HxW maps; sorted by class).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CAM file {path} does not exist")
    meta: dict = {}
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"cams", "classes"} - set(z.files)
                if missing:
                    raise InputError(f"{path} is not a transcam_nb CAM file: it lacks {sorted(missing)} "
                                     f"(has {z.files})")
                cams = z["cams"].astype(np.float32)
                classes = z["classes"].astype(np.int64)
                if "meta" in z.files:
                    meta = json.loads(str(z["meta"]))
        except InputError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # not an .npz archive, or cut short
            raise InputError(f"cannot read CAM file {path}: corrupt, or not a .npz written by transcam_nb "
                             f"({type(e).__name__})") from None
    elif path.suffix == ".npy":
        if not allow_pickle:
            raise InputError(
                f"{path} looks like an authors'-format CAM file (a pickled dict in .npy); reading it needs "
                "allow_pickle=True (--allow-pickle). Only do that for files you trust: unpickling can run code"
            )
        obj = np.load(path, allow_pickle=True)
        if obj.dtype != object or obj.shape != ():
            raise InputError(f"{path}: expected a pickled dict {{class: HxW map}}, got an array of shape {obj.shape}")
        d = obj.item()
        if not isinstance(d, dict):
            raise InputError(f"{path}: expected a dict {{class: HxW map}}, got {type(d).__name__}")
        keys = sorted(int(k) for k in d)
        classes = np.asarray(keys, dtype=np.int64)
        cams = (np.stack([np.asarray(d[k], dtype=np.float32) for k in keys]) if keys
                else np.zeros((0, 0, 0), np.float32))
    else:
        raise InputError(f"unknown CAM file type {path.suffix!r} for {path}; expected .npz or .npy")
    return (cams, classes, meta) if with_meta else (cams, classes)
