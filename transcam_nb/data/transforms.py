"""The paper's training augmentations and the inference normalisation (docs/reference.md §4, §3).

Training pipeline of the authors' ``train_TransCAM.py``, in order:

1. random long-side resize: the long side becomes an integer drawn uniformly from
   ``resize_long = (320, 640)`` (inclusive), the short side follows the aspect ratio
   (rounded), bicubic for the image (nearest for a mask);
2. horizontal flip with probability 0.5;
3. colour jitter (brightness 0.3, contrast 0.3, saturation 0.3, hue 0.1; the four
   adjustments in a random order, as torchvision's ``ColorJitter``);
4. ImageNet normalisation ``(x / 255 - mean) / std`` (computed in float64, stored float32);
5. random crop ``crop = 512``: where the image is smaller than the crop it is placed at a
   random offset in a zero canvas (zero = the mean colour after normalising; masks are padded
   with 255 = ignore), where it is larger a random window is cut;
6. HWC → CHW.

Every size is a parameter so the tiny profile can use small images. All randomness comes
from a ``numpy.random.Generator``, never from global RNGs, so results are reproducible:

* ``TrainTransform(seed=s)`` owns a generator seeded from ``s``; in DataLoader workers
  :func:`worker_init_fn` re-seeds it from the worker's torch seed (different per worker, and
  reproducible when the DataLoader's ``generator`` is seeded);
* better, ``transform.rng_for(index, epoch)`` gives the generator of item ``index`` in epoch
  ``epoch`` (seeded by ``(seed, epoch, index)``); :class:`~transcam_nb.data.voc.VOCDataset`
  uses it once ``dataset.set_epoch(e)`` has been called, which makes the augmentation of every
  item independent of the number of workers and of the order of loading.

The geometric draws (scale, flip, crop offset) are taken before the colour draws, so the
geometry for a given generator is the same with jitter on or off.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "denormalize",
    "resize_long",
    "random_resize_long",
    "color_jitter",
    "random_crop",
    "TrainTransform",
    "worker_init_fn",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 H×W×3 (or a PIL image) → float32 3×H×W, ``(x / 255 - mean) / std`` per channel.

    Computed in float64 and cast to float32 at the end, as the authors' ``Normalize``
    (which divides a uint8 array by 255.0 and writes into a float32 array).
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"normalize expects an H×W×3 image, got shape {arr.shape}")
    x = arr.astype(np.float64) / 255.0
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1))


def denormalize(x, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float 3×H×W (array or tensor) → uint8 H×W×3."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"denormalize expects a 3×H×W array, got shape {x.shape}")
    img = (x.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)) * 255.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _as_pil_mask(mask) -> Image.Image:
    if isinstance(mask, Image.Image):
        return mask if mask.mode in ("L", "P") else mask.convert("L")
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {arr.shape}")
    return Image.fromarray(arr.astype(np.uint8))


def resize_long(image: Image.Image, long_side: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize so that the longer side is ``long_side`` px, keeping the aspect ratio (the
    short side is rounded to the nearest integer, at least 1)."""
    w, h = image.size
    if w >= h:
        size = (int(long_side), max(1, int(round(h * long_side / w))))
    else:
        size = (max(1, int(round(w * long_side / h))), int(long_side))
    return image if size == (w, h) else image.resize(size, resample=resample)


def random_resize_long(image, mask, rng: np.random.Generator, lo: int, hi: int):
    """The authors' RandomResizeLong: long side uniform in [lo, hi] (inclusive)."""
    target = int(rng.integers(lo, hi + 1))
    image = resize_long(image, target, Image.BICUBIC)
    if mask is not None:
        mask = resize_long(mask, target, Image.NEAREST)
    return image, mask


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
    """torchvision-style ColorJitter driven by ``rng``: factors drawn uniformly from
    [1 - b, 1 + b] (hue shift from [-h, h]) and the four adjustments applied in a random order.
    A zero strength skips that adjustment (and draws nothing for it)."""
    import torchvision.transforms.functional as TF

    ops = []
    if brightness:
        ops.append(("b", float(rng.uniform(max(0.0, 1 - brightness), 1 + brightness))))
    if contrast:
        ops.append(("c", float(rng.uniform(max(0.0, 1 - contrast), 1 + contrast))))
    if saturation:
        ops.append(("s", float(rng.uniform(max(0.0, 1 - saturation), 1 + saturation))))
    if hue:
        ops.append(("h", float(rng.uniform(-hue, hue))))
    order = rng.permutation(len(ops)) if ops else []
    for k in order:
        kind, f = ops[int(k)]
        if kind == "b":
            image = TF.adjust_brightness(image, f)
        elif kind == "c":
            image = TF.adjust_contrast(image, f)
        elif kind == "s":
            image = TF.adjust_saturation(image, f)
        else:
            image = TF.adjust_hue(image, f)
    return image


def _crop_offsets(h: int, w: int, crop_h: int, crop_w: int, rng: np.random.Generator):
    """Offsets for :func:`random_crop`: (src_top, src_left, dst_top, dst_left, ch, cw)."""
    ch, cw = min(crop_h, h), min(crop_w, w)
    if h > crop_h:
        src_top, dst_top = int(rng.integers(0, h - crop_h + 1)), 0
    else:
        src_top, dst_top = 0, int(rng.integers(0, crop_h - h + 1))
    if w > crop_w:
        src_left, dst_left = int(rng.integers(0, w - crop_w + 1)), 0
    else:
        src_left, dst_left = 0, int(rng.integers(0, crop_w - w + 1))
    return src_top, src_left, dst_top, dst_left, ch, cw


def random_crop(arrays, fills, crop: int | tuple[int, int], rng: np.random.Generator):
    """Crop the same random window out of several H×W[×C] arrays (all the same H, W).

    Where an array is smaller than the crop it is placed at a random offset inside a canvas
    filled with ``fill`` (0 for a normalised image, 255 for a mask); where larger, a random
    window is cut. Returns the list of cropped arrays.
    """
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    h, w = arrays[0].shape[:2]
    st, sl, dt, dl, ch, cw = _crop_offsets(h, w, crop_h, crop_w, rng)
    out = []
    for a, fill in zip(arrays, fills):
        canvas = np.full((crop_h, crop_w) + a.shape[2:], fill, dtype=a.dtype)
        canvas[dt : dt + ch, dl : dl + cw] = a[st : st + ch, sl : sl + cw]
        out.append(canvas)
    return out


class TrainTransform:
    """The paper's training augmentation (docs/reference.md §4), as a seeded callable.

    ``t(image)`` → float32 tensor 3×crop×crop; ``t(image, mask)`` → (image tensor,
    int64 mask tensor crop×crop, padded with 255). ``image`` is a PIL image (or uint8 H×W×3
    array), ``mask`` a PIL "L"/"P" image or uint8 H×W array. Pass ``rng=`` to use a given
    generator (see :meth:`rng_for`); otherwise the transform's own generator is used.

    Parameters: ``resize_long`` (lo, hi) long-side range, or ``None`` to skip; ``crop`` int or
    (h, w), or ``None`` to skip cropping; ``flip``; ``jitter`` (brightness, contrast,
    saturation, hue) or ``None``; ``mean``/``std`` (ImageNet); ``seed`` (``None`` = fresh OS
    entropy, not reproducible).
    """

    def __init__(
        self,
        resize_long: tuple[int, int] | None = (320, 640),
        crop: int | tuple[int, int] | None = 512,
        flip: bool = True,
        jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = 0,
    ):
        if resize_long is not None:
            lo, hi = (int(resize_long[0]), int(resize_long[1]))
            if not 0 < lo <= hi:
                raise ValueError(f"resize_long must be (lo, hi) with 0 < lo <= hi, got {resize_long}")
            resize_long = (lo, hi)
        if crop is not None:
            ch, cw = (crop, crop) if isinstance(crop, int) else tuple(crop)
            if ch <= 0 or cw <= 0:
                raise ValueError(f"crop must be positive, got {crop}")
        if jitter is not None and len(jitter) != 4:
            raise ValueError(f"jitter must be (brightness, contrast, saturation, hue), got {jitter}")
        self.resize_long = resize_long
        self.crop = crop
        self.flip = bool(flip)
        self.jitter = tuple(jitter) if jitter is not None else None
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = int(np.random.SeedSequence().entropy % (2**63)) if seed is None else int(seed)
        self._rng = np.random.default_rng(self.seed)

    # -- randomness ----------------------------------------------------------------------
    def rng_for(self, index: int, epoch: int = 0) -> np.random.Generator:
        """The generator for item ``index`` in epoch ``epoch``: seeded by (seed, epoch, index),
        so it does not depend on workers or loading order."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def reseed(self, seed: int) -> None:
        """Re-seed the transform's own generator (used by :func:`worker_init_fn`)."""
        self._rng = np.random.default_rng([self.seed, int(seed)])

    # -- call ----------------------------------------------------------------------------
    def __call__(self, image, mask=None, *, rng: np.random.Generator | None = None):
        rng = self._rng if rng is None else rng
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if image.mode != "RGB":
            image = image.convert("RGB")
        pmask = None if mask is None else _as_pil_mask(mask)
        if pmask is not None and pmask.size != image.size:
            raise ValueError(f"mask size {pmask.size} differs from image size {image.size} (W×H)")

        # geometry first (independent of the jitter setting)
        if self.resize_long is not None:
            image, pmask = random_resize_long(image, pmask, rng, *self.resize_long)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            if pmask is not None:
                pmask = pmask.transpose(Image.FLIP_LEFT_RIGHT)
        crop_rng = None
        if self.crop is not None:
            # draw the crop offsets now, from a child generator, so colour draws cannot shift them
            crop_rng = np.random.default_rng(rng.integers(0, 2**63, dtype=np.int64))

        if self.jitter is not None:
            image = color_jitter(image, rng, *self.jitter)

        x = normalize(np.asarray(image), self.mean, self.std).transpose(1, 2, 0)  # H×W×3 float32
        m = None if pmask is None else np.asarray(pmask, dtype=np.uint8)
        if self.crop is not None:
            if m is None:
                (x,) = random_crop([x], [0.0], self.crop, crop_rng)
            else:
                x, m = random_crop([x, m], [0.0, 255], self.crop, crop_rng)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        if m is None:
            return xt
        return xt, torch.from_numpy(m.astype(np.int64))

    def __repr__(self) -> str:
        return (
            f"TrainTransform(resize_long={self.resize_long}, crop={self.crop}, flip={self.flip}, "
            f"jitter={self.jitter}, seed={self.seed})"
        )


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy/random from the worker's torch seed and
    re-seed the dataset's transform generator (different per worker; reproducible when the
    DataLoader is given a seeded ``generator``). Not needed once ``dataset.set_epoch`` is used."""
    import random

    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % (2**32) if info is None else info.seed % (2**32)
    np.random.seed(seed)
    random.seed(seed)
    if info is not None:
        ds = info.dataset
        while hasattr(ds, "dataset") and not hasattr(ds, "transform"):  # Subset wrappers
            ds = ds.dataset
        t = getattr(ds, "transform", None)
        if t is not None and hasattr(t, "reseed"):
            t.reseed(seed)
