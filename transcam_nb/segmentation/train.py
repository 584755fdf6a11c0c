"""Training DeepLab on pseudo labels (the last stage of the pipeline, docs/reference.md §8).

The reference trains DeepLab-v1 / ResNet-38 for **20,000 iterations, batch 10**, SGD (momentum
0.9, weight decay 5e-4) at base lr 1e-3 with the **poly** schedule
``lr · (1 − itr / (max_itr + 1))^0.9``, the parameter groups of
:meth:`~transcam_nb.segmentation.deeplab.DeepLab.param_groups` (1× / 2× / 10× / 20×), and
cross-entropy with ``ignore_index=255`` on the pseudo labels. Each training sample is
augmented with, in this order: HSV jitter (±10 on H, S and V), a random rescale in
[0.5, 1.5], a horizontal flip with probability 0.5, ImageNet normalisation, and a 448×448
random crop (padded with 0 = the mean after normalisation for the image, 255 for the label).

``SEG_PRESETS["paper"]`` is that schedule. Differences, all documented:

* backbone: timm ``resnet101`` at output stride 8 (DeepLab-v2's usual ImageNet backbone)
  instead of the authors' ResNet-38, which timm does not provide; pass an ImageNet
  checkpoint of timm's ``resnet101`` as ``pretrained_path`` (no downloads here). Its BN is
  frozen and its stem conv frozen, like the reference's backbone BN and ``conv1a``.
* HSV jitter is done with Pillow's HSV (hue on a 0–255 circle); the ±10 hue step is given in
  OpenCV's 0–179 units (≈ ±20°) and converted, hue wraps around, S and V are clipped.
* a crop window larger than the (scaled) image places the image at a random offset inside the
  padded 448×448 canvas.
* the random rescale is bicubic like the authors' (``cv2.INTER_CUBIC``, reproduced with torch's
  bicubic, :func:`resize_cubic`); multi-scale *inference*
  (:func:`transcam_nb.segmentation.infer.predict`) rescales the normalised image bilinearly.
* the reference fixes cudnn determinism; here ``deterministic`` is off by default (faster).
* AMP (bf16, or fp16 with a GradScaler) on CUDA via :func:`transcam_nb.device.autocast`.

``SEG_PRESETS["tiny"]`` is a CPU-sized variant (ResNet-18 from scratch, small crops, BN not
frozen because an untrained backbone has no statistics worth freezing).

Data are read straight from disk: images ``<image_root>/JPEGImages/<id>.jpg`` (or
``<image_dir>/<id>.jpg``, e.g. a COCO split's folder) and pseudo
labels ``<pseudo_label_dir>/<id>.png`` (single-channel or palette PNG, 255 = ignore). Sample
``g`` of the run (iteration ``g // batch``) is a pure function of ``(seed, g)``: the image order
is a fresh permutation per pass over the data and every augmentation draws from
``numpy.random.default_rng([seed, g])``, so a resumed run sees exactly the batches an
uninterrupted run would, whatever the number of loader workers.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import SEG_PRESETS, SegConfig, get_seg_config  # noqa: F401  (defined in config)
from ..data.transforms import normalize, random_crop
from ..data.voc import resolve_root
from .deeplab import DeepLab
from .infer import _read_rgb, read_label

__all__ = [
    "SegConfig",
    "SEG_PRESETS",
    "get_seg_config",
    "poly_lr",
    "hsv_jitter",
    "joint_augment",
    "build_model",
    "load_segmentation_model",
    "train_segmentation",
    "TrainResult",
    "PseudoLabelDataset",
]

CHECKPOINT_FORMAT = "transcam_nb.deeplab/1"  # model.pt (config + weights)
TRAIN_CHECKPOINT_FORMAT = "transcam_nb.deeplab-train/2"  # last.pt, written by transcam_nb.engine


def poly_lr(base_lr: float, itr: int, max_itr: int, power: float = 0.9) -> float:
    """The reference's poly schedule: ``base_lr · (1 − itr / (max_itr + 1)) ** power`` (itr from 0);
    :func:`transcam_nb.engine.lr_at` with ``schedule="poly_deeplab"``, which the training uses."""
    from ..engine import lr_at

    return lr_at(itr, max_itr, base_lr, "poly_deeplab", power=power)


# ----------------------------------------------------------------------------- augmentation
def hsv_jitter(image: np.ndarray, dh: int, ds: int, dv: int) -> np.ndarray:
    """Shift hue by ``dh`` (OpenCV units: 180 per turn; wraps), saturation by ``ds`` and value by
    ``dv`` (0..255, clipped). ``[H, W, 3]`` uint8 in and out."""
    if dh == 0 and ds == 0 and dv == 0:
        return image
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(round(dh * 256 / 180))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + dv, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.uint8)


def resize_cubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a uint8 ``[H, W, 3]`` image as OpenCV's ``INTER_CUBIC`` (the authors'
    random rescale): Keys' kernel with ``a = -0.75``, pixel centres aligned (align_corners=False),
    no anti-aliasing, rounded and clipped to uint8. (Pillow's BICUBIC differs: ``a = -0.5`` and
    an anti-aliasing filter when shrinking.)"""
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)
    y = F.interpolate(x, size=(int(height), int(width)), mode="bicubic", align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def joint_augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: int,
                  scale: Sequence[float] = (0.5, 1.5), flip: bool = True, hsv: int = 10,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's training transform, applied jointly to image and label.

    HSV jitter (uniform integers in ``[-hsv, hsv]``) → random scale ``s ~ U(scale)`` (image
    bicubic as the authors' ``cv2.INTER_CUBIC``, :func:`resize_cubic`; label nearest) → horizontal
    flip with probability 0.5 → ImageNet normalisation
    → ``crop × crop`` random crop, the image padded with 0 (the mean) and the label with
    ``ignore_index``. Returns ``([3, crop, crop] float32, [crop, crop] int64)``.

    Normalisation and crop are :func:`transcam_nb.data.transforms.normalize` and
    :func:`~transcam_nb.data.transforms.random_crop` (a window larger than the scaled image
    places the image at a random offset in the padded canvas).
    """
    if image.shape[:2] != label.shape:
        raise ValueError(f"image size {image.shape[:2]} and label size {label.shape} differ")
    if hsv:
        dh, ds, dv = (int(v) for v in rng.integers(-hsv, hsv + 1, size=3))
        image = hsv_jitter(image, dh, ds, dv)
    s = float(rng.uniform(scale[0], scale[1]))
    h, w = label.shape
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) != (h, w):
        image = resize_cubic(image, nh, nw)
        label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        label = label[:, ::-1]
    x = normalize(image).transpose(1, 2, 0)  # [h, w, 3] float32
    y = label.astype(np.int64)  # int64 before padding, so any ignore_index fits
    x, y = random_crop([x, y], [0.0, ignore_index], crop, rng)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(y)


class PseudoLabelDataset(torch.utils.data.Dataset):
    """Augmented training samples, indexed by the *global sample number* ``g`` of the run.

    ``g`` selects image ``perm_e[g mod N]`` with ``perm_e`` a permutation drawn from
    ``default_rng([seed, 0, e])`` for pass ``e = g // N``, and augments it with
    ``default_rng([seed, 1, g])``. Length: ``iters × batch``.
    """

    def __init__(self, cfg: SegConfig, image_root: str | os.PathLike | None, pseudo_label_dir: str | os.PathLike,
                 ids: Sequence[str], image_dir: str | os.PathLike | None = None):
        self.cfg = cfg
        self.image_dir = Path(image_dir) if image_dir is not None else resolve_root(image_root) / "JPEGImages"
        self.label_dir = Path(pseudo_label_dir)
        self.ids = list(ids)
        if not self.ids:
            raise ValueError("ids is empty: no training images")
        if not self.label_dir.is_dir():
            raise FileNotFoundError(f"pseudo-label folder {str(self.label_dir)!r} does not exist")
        missing = [i for i in self.ids if not (self.image_dir / f"{i}.jpg").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} training image(s) missing from {str(self.image_dir)!r}, e.g. {missing[:3]}")
        missing = [i for i in self.ids if not (self.label_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} pseudo label(s) missing from {str(self.label_dir)!r}, e.g. {missing[:3]}")
        self._perm_epoch = -1
        self._perm = None

    def __len__(self) -> int:
        return self.cfg.iters * self.cfg.batch

    def image_index(self, g: int) -> int:
        n = len(self.ids)
        epoch, pos = divmod(int(g), n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.cfg.seed, 0, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, g: int):
        image_id = self.ids[self.image_index(g)]
        image = _read_rgb(self.image_dir / f"{image_id}.jpg")
        label = read_label(self.label_dir / f"{image_id}.png", num_classes=self.cfg.num_classes)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"pseudo label {image_id}.png has size {label.shape}, its image has {image.shape[:2]}")
        rng = np.random.default_rng([self.cfg.seed, 1, int(g)])
        c = self.cfg
        return joint_augment(image, label, rng, crop=c.crop, scale=c.scale, flip=c.flip, hsv=c.hsv_jitter)


# ----------------------------------------------------------------------------- model + checkpoints
def build_model(cfg: SegConfig, load_pretrained: bool = True) -> DeepLab:
    """The :class:`DeepLab` a config describes (ImageNet weights from ``cfg.pretrained_path``)."""
    return DeepLab(backbone=cfg.backbone, head=cfg.head, num_classes=cfg.num_classes,
                   output_stride=cfg.output_stride,
                   pretrained_path=cfg.pretrained_path if load_pretrained else None,
                   freeze_bn=cfg.freeze_bn, freeze_stem=cfg.freeze_stem,
                   head_bn_momentum=cfg.head_bn_momentum, dropout=cfg.dropout,
                   backbone_args=dict(cfg.backbone_args) or None)


def _read_checkpoint(path: Path) -> dict:
    from ..models.checkpoints import CheckpointError, read_checkpoint

    ck = read_checkpoint(path, what="DeepLab checkpoint")
    if ck.get("format") not in (CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_FORMAT):
        raise CheckpointError(f"{str(path)!r} is not a transcam_nb DeepLab checkpoint (format {CHECKPOINT_FORMAT!r} "
                              f"or {TRAIN_CHECKPOINT_FORMAT!r}, found {ck.get('format')!r})")
    return ck


def load_segmentation_model(path: str | os.PathLike, device=None) -> DeepLab:
    """Rebuild a trained DeepLab from a checkpoint written by :func:`train_segmentation`
    (``last.pt`` or ``model.pt``), in eval mode on ``device``."""
    from ..device import get_device

    ck = _read_checkpoint(Path(path))
    cfg = SegConfig.from_dict(ck.get("settings") or ck["config"])  # last.pt keeps the SegConfig as "settings"
    model = build_model(cfg, load_pretrained=False)
    model.load_state_dict(ck["model"])
    model.config = cfg
    return model.to(get_device(device)).eval()


# fields that may differ between a checkpoint and the config that resumes it
_RESUME_FREE = {"workers", "ckpt_every", "log_every", "pretrained_path", "test_scales", "test_flip", "test_crf"}


@dataclass
class TrainResult:
    """What :func:`train_segmentation` returns."""

    model: DeepLab
    checkpoint: Path  # last.pt: model + optimizer + iteration + RNG
    model_path: Path  # model.pt: model + config only (written when the run is complete)
    log_path: Path  # JSON lines, one per logged iteration
    iteration: int
    last_loss: float


def seg_loop_config(cfg: SegConfig):
    """The :class:`transcam_nb.engine.LoopConfig` of a DeepLab run: SGD (``momentum``) over
    :meth:`DeepLab.param_groups`, the reference's poly schedule (``lr_schedule="poly_deeplab"``,
    :func:`poly_lr`), ``iters`` steps of ``batch`` samples, AMP when ``cfg.amp``, a checkpoint
    every ``ckpt_every`` steps and at the end of every call."""
    from ..engine import LoopConfig

    return LoopConfig(max_steps=int(cfg.iters), epochs=1, batch_size=int(cfg.batch), lr=float(cfg.lr),
                      weight_decay=float(cfg.weight_decay), lr_schedule="poly_deeplab",
                      poly_power=float(cfg.poly_power), optimizer="sgd", momentum=float(cfg.momentum),
                      precision="auto" if cfg.amp else "fp32", num_workers=int(cfg.workers), seed=int(cfg.seed),
                      deterministic=bool(cfg.deterministic), checkpoint_minutes=None,
                      checkpoint_every_steps=int(cfg.ckpt_every), log_every=int(cfg.log_every))


def train_segmentation(cfg: SegConfig, image_root: str | os.PathLike | None, pseudo_label_dir: str | os.PathLike,
                       ids: Sequence[str], out_dir: str | os.PathLike, device=None, resume: bool = True,
                       max_steps: int | None = None, progress: bool = True,
                       from_scratch: bool = False, image_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train DeepLab on pseudo labels with the reference schedule (docs/reference.md §8), in the
    package's one training loop (:func:`transcam_nb.engine.train_loop`, settings from
    :func:`seg_loop_config`).

    Args:
        cfg: a :class:`SegConfig` (``get_seg_config("paper")`` for the reference values).
        image_root: folder holding ``JPEGImages/`` (or a devkit root, see
            :func:`transcam_nb.data.voc.resolve_root`); unused when ``image_dir`` is given.
        pseudo_label_dir: ``<id>.png`` pseudo labels (255 = ignore).
        ids: training image ids (the reference uses VOC ``train_aug``, 10,582 images).
        out_dir: receives ``last.pt`` (every ``cfg.ckpt_every`` iterations and at the end),
            ``model.pt`` (at the end) and ``log.jsonl``.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` … (:func:`transcam_nb.device.get_device`).
        resume: continue from ``out_dir/last.pt`` if present (the config must match, bookkeeping
            fields aside); ``False`` starts afresh and overwrites.
        max_steps: run at most this many iterations in this call (then checkpoint and return).
        progress: show a tqdm bar with the loss.
        from_scratch: allow a backbone with frozen BatchNorm (the paper preset) to start from
            random weights; without it such a config needs ``pretrained_path``.
        image_dir: the folder holding the images as ``<id>.jpg`` (instead of ``image_root/JPEGImages``;
            the pipeline passes its dataset's, e.g. a COCO split's ``train2014/``).
    """
    from ..device import seed_everything
    from ..artifacts import append_jsonl
    from ..engine import RunFiles, StageSpec, train_loop, truncate_log

    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = RunFiles(checkpoint="last.pt", final="model.pt", metrics=None, summary=None, config=None)
    ckpt_path, model_path, log_path = out_dir / files.checkpoint, out_dir / files.final, out_dir / "log.jsonl"

    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    dataset = PseudoLabelDataset(cfg, image_root, pseudo_label_dir, ids, image_dir=image_dir)
    resuming = resume and ckpt_path.is_file()
    if not resuming:  # frozen BN statistics of an untrained backbone mean nothing: the paper preset needs weights
        from ..models.factory import require_init

        require_init(cfg.pretrained_path, who="DeepLab with a frozen-BatchNorm backbone (the paper preset)",
                     argument="SegConfig.pretrained_path (the pipeline's "
                              "--config 'seg_overrides={\"pretrained_path\": \"FILE\"}')",
                     expected=f"an ImageNet checkpoint of timm's {cfg.backbone}", from_scratch=from_scratch,
                     needs_init=cfg.freeze_bn)
    model = build_model(cfg, load_pretrained=not resuming)
    if not resuming and log_path.exists():
        log_path.unlink()
    t0 = time.time()

    def loss_fn(logits, y):
        n_valid = (y != 255).sum().clamp(min=1)
        return F.cross_entropy(logits.float(), y, ignore_index=255, reduction="sum") / n_valid

    def log(info):
        if info["step"] % cfg.log_every == 0 or info["last"]:
            append_jsonl(log_path, {"iteration": info["step"], "loss": info["loss"], "lr": info["lr"],
                                    "time_s": round(time.time() - t0, 3)})

    stage = StageSpec(files=files, checkpoint_format=TRAIN_CHECKPOINT_FORMAT, settings=cfg.to_dict(),
                      settings_resume_free=tuple(sorted(_RESUME_FREE)), shuffle=False, own_loader_rng=True,
                      extra_state=lambda step: {"iteration": step},
                      on_resume=lambda ck: truncate_log(log_path, int(ck["step"]), key="iteration"),
                      final_state=lambda net, step: {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(),
                                                     "iteration": step, "model": net.state_dict()})
    summary = train_loop(model, dataset, loss_fn, out_dir, seg_loop_config(cfg), device=device, resume=resume,
                         progress=progress, callback=log, desc="deeplab", stage=stage, stop_after=max_steps)
    model.config = cfg
    model.eval()
    last = summary.get("last_loss")
    return TrainResult(model=model, checkpoint=ckpt_path, model_path=model_path, log_path=log_path,
                       iteration=int(summary["steps"]), last_loss=float("nan") if last is None else float(last))
