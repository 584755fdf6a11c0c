"""Training AffinityNet (docs/reference.md §7.1): settings (:class:`AffinityConfig`, :data:`AFFINITY_PRESETS`),
the augmented training items (:class:`AffinityDataset`) and :func:`train_affinity`.

Poly-lr SGD with the reference's parameter groups and augmentation. *Quirk*: the authors'
``PolyOptimizer`` takes ``momentum=0.9`` but uses it only as the poly power and never passes it to
SGD, so the reference trains **without momentum**. The ``paper`` preset reproduces this
(``momentum=0.0``, ``poly_power=0.9``); set ``momentum=0.9`` to get what the code seems to mean.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import AFFINITY_PRESETS, RUN_ONLY_FIELDS, AffinityConfig, get_affinity_preset  # noqa: F401
from ..data.transforms import color_jitter, normalize, random_crop
from ..data.voc import load_rgb
from ..pseudo import load_label_png
from .affinity import AffinityNet, affinity_labels, affinity_loss, extract_pair_labels, pair_affinity

__all__ = ["AffinityConfig", "AFFINITY_PRESETS", "get_affinity_preset", "AffinityDataset", "train_affinity",
           "affinity_loop_config", "AFFINITY_RESUME_FREE"]

AFFINITY_CHECKPOINT_FORMAT = "transcam_nb.affinity/2"


def _load_rgb(x, what: str) -> "np.ndarray":
    """A path (read by :func:`transcam_nb.data.voc.load_rgb`) or a uint8 (H, W, 3) array."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist")
        return np.array(load_rgb(p))
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must be a path or a uint8 (H, W, 3) array, got {a.dtype} {a.shape}")
    return a


def _load_label(x, what: str) -> "np.ndarray":
    """A path (an 8-bit L/P PNG, read by :func:`transcam_nb.pseudo.load_label_png`) or an
    integer (H, W) array."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist")
        try:
            return load_label_png(p)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    a = np.asarray(x)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be a path or an integer (H, W) array, got {a.dtype} {a.shape}")
    return a.astype(np.uint8)


class AffinityDataset(torch.utils.data.Dataset):
    """Training items for AffinityNet (docs/reference.md §7.1 augmentation).

    ``items``: a sequence of ``(image, la, ha)``, each a path or an array (uint8 H×W×3 RGB;
    uint8 H×W label maps, e.g. the PNGs written from :func:`make_la_ha_labels`). Per item:
    colour jitter (0.3, 0.3, 0.3, 0.1) on the image → a joint random crop ``crop_size`` of image
    and both label maps, zero-padded when the image is smaller → joint horizontal flip →
    ImageNet normalisation → labels downscaled ×1/8 by nearest neighbour (every 8th pixel) →
    :func:`affinity_labels`. There is no random rescaling (as the reference). Padding is
    background in both maps, so padded areas become background pairs (reference behaviour).

    Returns ``(image float32 [3, crop, crop], label uint8 [crop/8, crop/8])``. The randomness
    of item ``i`` in epoch ``e`` comes from ``np.random.default_rng([seed, e, i])`` (call
    :meth:`set_epoch`), so it does not depend on DataLoader workers and resumes exactly.
    """

    def __init__(
        self,
        items: Sequence[tuple],
        crop_size: int = 448,
        color_jitter: tuple | None = (0.3, 0.3, 0.3, 0.1),
        flip: bool = True,
        seed: int = 0,
        label_stride: int = 8,
    ):
        if crop_size % label_stride:
            raise ValueError(f"crop_size must be a multiple of {label_stride}, got {crop_size}")
        self.items = list(items)
        for i, it in enumerate(self.items):
            if len(it) != 3:
                raise ValueError(f"item {i} must be (image, la, ha), got {len(it)} entries")
        self.crop_size = int(crop_size)
        self.color_jitter = tuple(color_jitter) if color_jitter else None
        self.flip = flip
        self.seed = int(seed)
        self.label_stride = int(label_stride)
        self.epoch = 0

    @classmethod
    def from_folders(cls, image_dir, la_dir, ha_dir, ids: Sequence[str] | None = None, image_ext: str = ".jpg", **kw):
        """Items ``<image_dir>/<id><image_ext>``, ``<la_dir>/<id>.png``, ``<ha_dir>/<id>.png``
        (the authors' ``out_crf_0.60`` / ``out_crf_0.25`` layout); ``ids`` default: all PNGs of la_dir."""
        image_dir, la_dir, ha_dir = Path(image_dir), Path(la_dir), Path(ha_dir)
        for d in (image_dir, la_dir, ha_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"folder {d} does not exist")
        if ids is None:
            ids = sorted(p.stem for p in la_dir.glob("*.png"))
        if not ids:
            raise ValueError(f"no label PNGs found in {la_dir}")
        items = [(image_dir / f"{i}{image_ext}", la_dir / f"{i}.png", ha_dir / f"{i}.png") for i in ids]
        return cls(items, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        img_src, la_src, ha_src = self.items[index]
        img = _load_rgb(img_src, f"image of item {index}")
        la = _load_label(la_src, f"la label of item {index}")
        ha = _load_label(ha_src, f"ha label of item {index}")
        if la.shape != img.shape[:2] or ha.shape != img.shape[:2]:
            raise ValueError(
                f"item {index}: image {img.shape[:2]}, la {la.shape} and ha {ha.shape} must have the same size"
            )
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.color_jitter:  # torchvision's ColorJitter(b, c, s, h), draws from rng
            from PIL import Image

            img = np.asarray(color_jitter(Image.fromarray(img), rng, *self.color_jitter))
        # joint random crop, zero padded (PSA RandomCrop semantics)
        stack = np.concatenate([img, la[..., None], ha[..., None]], axis=-1)
        (out,) = random_crop([stack], [0], self.crop_size, rng)
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        x = normalize(out[..., :3])  # [3, crop, crop] float32
        s = self.label_stride
        lab = affinity_labels(out[::s, ::s, 3], out[::s, ::s, 4])
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(lab))


#: settings that may change between a run and its resumption (they do not change what is trained):
#: the run-only fields, the preset's name and the random walk's settings
AFFINITY_RESUME_FREE = tuple(sorted(RUN_ONLY_FIELDS | {"name", "beta", "logt", "bg"}))


def affinity_loop_config(cfg: AffinityConfig):
    """The :class:`transcam_nb.engine.LoopConfig` of an AffinityNet run: SGD over
    :meth:`AffinityNet.param_groups` with ``cfg.momentum``, the poly schedule
    ``lr · lr_mult · (1 − step/max_step)^poly_power``, ``epochs`` full epochs (drop_last),
    full precision, a checkpoint every ``save_every`` steps, at the end of every epoch and when a
    call stops."""
    from ..engine import LoopConfig

    return LoopConfig(epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), lr=float(cfg.lr),
                      weight_decay=float(cfg.weight_decay), lr_schedule="poly", poly_power=float(cfg.poly_power),
                      optimizer="sgd", momentum=float(cfg.momentum), precision="fp32", num_workers=int(cfg.num_workers),
                      seed=int(cfg.seed), checkpoint_minutes=None, checkpoint_every_steps=cfg.save_every or None)


def train_affinity(
    model: AffinityNet,
    dataset: torch.utils.data.Dataset,
    cfg: AffinityConfig | str = "paper",
    out_dir: str | os.PathLike = "runs/affinity",
    device: str | torch.device | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    from_scratch: bool = False,
) -> dict:
    """Train AffinityNet as ``train_aff.py`` (docs/reference.md §7.1), in the package's one training
    loop (:func:`transcam_nb.engine.train_loop`, settings from :func:`affinity_loop_config`).

    Poly learning rate ``lr · mult · (1 - step/max_step)^poly_power`` with SGD (``momentum``
    from the config: 0.0 in ``paper``, the reference quirk), parameter groups of
    :meth:`AffinityNet.param_groups`, ``max_step = len(dataset) // batch_size · epochs``
    (drop_last), the loss of :func:`affinity_loss` on the pairs within ``cfg.radius``.
    ``dataset`` yields ``(image [3, S, S], affinity label [S/8, S/8])`` (e.g.
    :class:`AffinityDataset`); epoch ``e`` visits it in the order of a generator seeded with
    ``seed + e`` (:class:`transcam_nb.engine.ResumableDistributedSampler`).

    Writes ``out_dir/affinity_last.pt`` (resumable: model, optimizer, step, history, RNG state)
    every ``cfg.save_every`` steps, at the end of every epoch and at the end of the call, and
    ``out_dir/affinity_net.pt`` (weights only) when training is complete; both atomically. With
    ``resume=True`` an existing ``affinity_last.pt`` is continued; a checkpoint made with other
    settings (anything but :data:`AFFINITY_RESUME_FREE`) or another dataset size is refused with a
    ``ValueError``. ``stop_after`` ends this call after that many steps (for time-limited
    sessions; a later call resumes). Returns ``{"step", "max_step", "history", "last", "final"}``
    (``final`` is None until training is complete).

    The ``paper`` preset refuses to train a network whose backbone was not loaded from ImageNet
    weights (``AffinityNet(pretrained_path=...)``) unless ``from_scratch=True``.
    """
    from ..engine import RunFiles, StageSpec, train_loop

    if isinstance(cfg, str):
        cfg = get_affinity_preset(cfg)
    out_dir = Path(out_dir)
    files = RunFiles(checkpoint="affinity_last.pt", final="affinity_net.pt", metrics=None, summary=None, config=None)
    n = len(dataset)
    if n // cfg.batch_size < 1:
        raise ValueError(f"the dataset has {n} items, fewer than one batch of {cfg.batch_size}")
    ds_stride = getattr(dataset, "label_stride", None)
    if ds_stride is not None and ds_stride != model.stride:
        raise ValueError(f"dataset labels are at 1/{ds_stride} but the model's output stride is {model.stride}")

    resuming = resume and (out_dir / files.checkpoint).is_file()
    if not resuming and model.pretrained_path is None:
        from ..models.factory import PROFILES_NEEDING_INIT, require_init

        require_init(None, who=f"AffinityNet preset {cfg.name!r}", from_scratch=from_scratch,
                     needs_init=cfg.name in PROFILES_NEEDING_INIT,
                     argument="AffinityNet(pretrained_path=FILE) (the pipeline's --config affinity_weights=FILE)",
                     expected=f"an ImageNet state dict of the {model.backbone_name} backbone")
    history: list[dict] = []
    parts_box: dict = {}

    def loss_fn(feats, lab):
        aff = pair_affinity(feats, cfg.radius)
        bg, fg, neg = extract_pair_labels(lab, cfg.radius)
        loss, parts = affinity_loss(aff, bg, fg, neg)
        parts_box.update(parts)
        return loss

    def record(info):
        history.append({"step": info["step"], "loss": info["loss"],
                        **{k: float(v) for k, v in parts_box.items()}, "lr": info["lr"]})

    def on_resume(ck):
        history[:] = list(ck.get("history") or [])

    stage = StageSpec(files=files, checkpoint_format=AFFINITY_CHECKPOINT_FORMAT,
                      settings={**cfg.to_dict(), "dataset_size": n}, settings_resume_free=AFFINITY_RESUME_FREE,
                      extra_state=lambda step: {"history": list(history)}, on_resume=on_resume,
                      final_state=lambda net, step: net.state_dict())
    summary = train_loop(model, dataset, loss_fn, out_dir, affinity_loop_config(cfg),
                         device=device if device is not None else (None if cfg.device == "auto" else cfg.device),
                         resume=resume, progress=progress, callback=record, desc="AffinityNet", stage=stage,
                         stop_after=stop_after)
    done = bool(summary.get("complete"))
    return {"step": int(summary["steps"]), "max_step": int(summary["total_steps"]), "history": history,
            "last": out_dir / files.checkpoint, "final": out_dir / files.final if done else None}
