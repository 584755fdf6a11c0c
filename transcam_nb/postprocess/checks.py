"""Input checks shared by the post-processings (:mod:`.crf`, :mod:`.par`, :mod:`.random_walk`):
images, label maps and probability maps as numpy arrays, each refused with one line naming what
was expected."""
from __future__ import annotations

import numpy as np


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor without importing torch here
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    return x


def _check_image(image, name: str = "image") -> np.ndarray:
    """The CRF's appearance kernel reads raw RGB bytes: a C-contiguous uint8 H×W×3 array."""
    image = _as_numpy(image, name)
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 RGB image (H, W, 3), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB, channels last), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    # pydensecrf keeps a pointer to the buffer: it must be C-contiguous and writable (it rejects
    # read-only arrays such as np.asarray(PIL image)), so copy when it is not
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()


def _check_labels(labels, n_labels: int, hw: tuple[int, int]) -> np.ndarray:
    labels = _as_numpy(labels, "labels")
    if labels.shape != hw:
        raise ValueError(f"labels must have the image's spatial shape {hw}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise TypeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if not isinstance(n_labels, (int, np.integer)) or n_labels < 2:
        raise ValueError(f"n_labels must be an integer >= 2 (background included), got {n_labels!r}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi >= n_labels:
        raise ValueError(
            f"labels must lie in [0, n_labels-1] = [0, {n_labels - 1}], found values in [{lo}, {hi}] "
            "(map ignore values such as 255 to a real class before the CRF)"
        )
    return labels.astype(np.int64, copy=False)


def _check_probs(probs, hw: tuple[int, int]) -> np.ndarray:
    probs = _as_numpy(probs, "probs")
    if probs.ndim != 3 or probs.shape[1:] != hw:
        raise ValueError(f"probs must have shape (C, H, W) = (C, {hw[0]}, {hw[1]}), got {probs.shape}")
    if probs.shape[0] < 2:
        raise ValueError(f"probs needs at least 2 classes, got {probs.shape[0]}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be floating point class probabilities, got dtype {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or inf")
    if probs.min() < 0 or probs.max() > 1 + 1e-4:
        raise ValueError(
            f"probs must be probabilities in [0, 1] (softmax output), found range [{probs.min():.4g}, {probs.max():.4g}]"
        )
    return probs.astype(np.float32, copy=False)
